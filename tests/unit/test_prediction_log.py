"""The prediction log (`affectflow.serving.prediction_log`): one record per clip from `affectflow
predict`, the pyfunc and KServe's scoring path, written atomically as date-partitioned Parquet;
the deployment statistics rebuild from it; audio only with keep_audio; old partitions pruned."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from base_settings import base_params
from test_predict import CLASSES, SR, make_model_dir, write_clip

from affectflow import cli
from affectflow.config import MonitorConfig
from affectflow.models.data import NormStats
from affectflow.serving.predict import RecognizerBackend, predict_paths
from affectflow.serving.predict.windows import WindowReader
from affectflow.serving.prediction_log import (
    ClipOutcome,
    PredictionLog,
    PredictionLogError,
    Recorder,
    Summariser,
    attach_recorder,
    prune,
    read_log,
    rebuild_deployment,
)
from affectflow.serving.pyfunc import AffectflowPyfunc, ServingConfig
from affectflow.serving.recognizer import Featurizer, load_model_dir
from affectflow.speech import SpeechCheck


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("log-model") / "model", seed=5)


def _pyfunc(model_dir: Path, log: Path, keep_audio: bool = False) -> AffectflowPyfunc:
    """The pyfunc as `mlflow models serve` loads it, with a prediction log configured."""
    context = SimpleNamespace(artifacts={"model_dir": str(model_dir)},
                              model_config={"prediction_log": str(log), "keep_audio": keep_audio})
    py = AffectflowPyfunc()
    py.load_context(context)
    py.speech = SpeechCheck.off()  # generated clips are not speech
    return py


def _waves(n: int, seed: int = 0, duration: float = 1.0) -> list[np.ndarray]:
    from affectflow.corpora.demo import utterance

    return [utterance(CLASSES[k % 4], speaker=seed + k, seed=seed + k, sr=SR, duration=duration) for k in range(n)]


def test_the_pyfunc_logs_one_record_per_row_with_its_probabilities_and_summary(model_dir, tmp_path) -> None:
    log = tmp_path / "log"
    py = _pyfunc(model_dir, log)
    waves = _waves(5)
    out = py.predict(None, pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [SR] * 5}))
    assert read_log(log).empty  # buffered: nothing written before a flush
    py.rec.recorder.log.flush()
    df = read_log(log)
    assert len(df) == 5 and list(df["item"]) == [f"row {i}" for i in range(5)]
    assert set(df["source"]) == {"pyfunc"} and set(df["status"]) == {"ok"}
    got = np.stack(df["probabilities"].to_list())
    assert np.allclose(got, out[CLASSES].to_numpy(np.float32), atol=1e-6)
    assert all(len(s) == 16 for s in df["summary"])  # 64 mel bands projected to summary_dims
    assert np.allclose(df["duration_s"], [len(w) / SR for w in waves])
    assert df["audio"].isna().all()  # no audio unless keep_audio
    parts = list(log.glob("date=*/part-*.parquet"))
    assert len(parts) == 1 and not [p for p in log.rglob("*") if p.is_file() and p not in parts]  # no temp left


def test_the_summary_is_the_clip_standardised_with_training_statistics_and_pooled(model_dir) -> None:
    rec = load_model_dir(model_dir)
    s = Summariser(rec.stats, rec.feature, 16)
    mel = Featurizer(rec.meta)(_waves(1))[0]
    z = (mel - np.asarray(rec.stats.mean)[:, None]) / np.asarray(rec.stats.std)[:, None]
    assert np.allclose(s.pooled(mel), z.mean(axis=1), atol=1e-4)
    assert np.allclose(s(mel), s.project(z.mean(axis=1)), atol=1e-4)
    assert np.allclose(Summariser(rec.stats, rec.feature, 16)(mel), s(mel))  # the projection is fixed


def test_an_ssl_vector_is_logged_as_one_frame_with_its_standardised_projection(tmp_path) -> None:
    """The Whisper front-end's `ssl` vector (layers x hidden, flattened; benchmarks/loop_study.py
    --kind ssl): its moments are the vector itself (what pretrain.target_log adapts to), its summary
    the vector standardised with the training statistics, then projected to summary_dims."""
    rng = np.random.default_rng(0)
    dim = 2 * 64
    mean, std = rng.normal(size=dim), rng.uniform(0.5, 2.0, dim)
    summarise = Summariser(NormStats("global", mean.tolist(), std.tolist()), "ssl", 16)
    rec = Recorder(PredictionLog(tmp_path / "log", flush_records=100), summarise, "m", "kserve", "key", ["a", "b"], SR)
    x = rng.normal(size=dim).astype(np.float32)
    rec.observe([x])
    rec.record([ClipOutcome("row 0", "ok", np.array([0.3, 0.7]), 1.0, windows=1)], [0], flush=True)
    r = read_log(tmp_path / "log").iloc[0]
    assert np.allclose(r["moment_mean"], x) and r["moment_frames"] == 1.0 and r["moment_m2"] is None
    assert len(r["summary"]) == 16
    assert np.allclose(r["summary"], summarise.project(((x - mean) / std).astype(np.float32)), atol=1e-4)
    assert not np.allclose(r["summary"], summarise.project(x), atol=1e-2)  # standardised before the projection


def test_the_deployment_statistics_rebuild_from_the_log(model_dir, tmp_path) -> None:
    log = tmp_path / "log"
    py = _pyfunc(model_dir, log)
    rate_a, rate_b = SR, 22050
    for k in range(3):  # three requests, two of them at another rate
        waves = _waves(4, seed=10 * k)
        rate = rate_b if k % 2 else rate_a
        if rate != SR:
            from affectflow import audio

            waves = [audio.resample(w, SR, rate) for w in waves]
        py.predict(None, pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [rate] * 4}))
    py.rec.recorder.log.flush()
    live = py.rec.deployment.stats
    rebuilt = rebuild_deployment(py.rec.meta, read_log(log))
    assert rebuilt.clips == live.clips == 12
    assert np.allclose(rebuilt.mean, live.mean, rtol=1e-5) and np.allclose(rebuilt.m2, live.m2, rtol=1e-5)  # float32 log
    state = tmp_path / "state.json"
    assert cli.main(["deploy-stats", "rebuild", "--model", str(model_dir), "--log", str(log), "--path", str(state),
                     "--defaults"]) == 0
    saved = json.loads(state.read_text())
    assert saved["clips"] == 12 and np.allclose(saved["mean"], live.mean, rtol=1e-5)


def _with_running_stats(model_dir: Path, to: Path, min_clips: int, window: int) -> Path:
    """A copy of `model_dir` whose deployment statistics run (`deploy_normalization`) with a short memory."""
    import shutil

    shutil.copytree(model_dir, to)
    meta = json.loads((to / "model.json").read_text())
    meta["deploy_normalization"] = {"mode": "running", "min_clips": min_clips, "window": window}
    (to / "model.json").write_text(json.dumps(meta))
    return to


def test_the_rebuild_is_exact_for_long_clips_scored_in_windows(model_dir, tmp_path) -> None:
    """A long clip is scored in windows, each taken by the running statistics on its own (forgetting
    per window); the log keeps each window's moments, so the rebuild replays exactly that."""
    from affectflow.serving.deployment import for_model

    folder = _with_running_stats(model_dir, tmp_path / "model", min_clips=2, window=3)
    params = base_params({"predict.decode_workers": 1, "predict.threads": 1, "predict.max_window_s": 1.0,
                          "predict.hop_s": 1.0, "predict.batch_size": 2, "paths.workdir": str(tmp_path / "w"),
                          "audio.min_speech_s": 0.0})
    clips = [write_clip(tmp_path / "in/long.wav", "angry", seed=1, duration=5.0),
             write_clip(tmp_path / "in/short.wav", "sad", seed=2, duration=1.0),
             write_clip(tmp_path / "in/longer.wav", "happy", seed=3, duration=7.0)]
    rec = load_model_dir(folder)
    attach_recorder(rec, tmp_path / "log", params.monitor, str(folder), "predict")
    res = predict_paths(params, clips, backend=RecognizerBackend(str(folder), rec, torch.device("cpu"), 2),
                        report=lambda m: None)
    df = read_log(tmp_path / "log")
    windows = [p.speech_windows for p in res.predictions]
    assert list(df["windows"]) == windows and windows[0] >= 5 and windows[1] == 1 and windows[2] >= 7
    assert [len(f) for f in df["window_frames"]] == windows
    assert [None if w is None else len(w) for w in df["window_mean"]] == [windows[0], None, windows[2]]  # one: the clip's
    live = rec.deployment.stats
    rebuilt = rebuild_deployment(rec.meta, df)
    assert rebuilt.clips == live.clips == sum(windows) and live.clips > live.window  # forgetting was at work
    assert np.allclose(rebuilt.mean, live.mean, rtol=1e-5) and np.allclose(rebuilt.m2, live.m2, rtol=1e-5)
    assert rebuilt.weight == pytest.approx(live.weight, rel=1e-9)
    merged = for_model(rec.meta)  # the clip-level moments alone (the log before window fields): not exact
    for _, r in df.iterrows():
        m2 = np.zeros(len(r["moment_mean"])) if r["moment_m2"] is None else np.asarray(r["moment_m2"], np.float64)
        merged.merge(np.asarray(r["moment_mean"], np.float64), m2, float(r["moment_frames"]), int(r["windows"]))
    assert not np.isclose(merged.weight, live.weight, rtol=1e-3)
    assert not np.allclose(merged.m2, live.m2, rtol=1e-3)
    state = tmp_path / "state.json"
    assert cli.main(["deploy-stats", "rebuild", "--model", str(folder), "--log", str(tmp_path / "log"),
                     "--path", str(state), "--defaults"]) == 0
    saved = json.loads(state.read_text())
    assert saved["clips"] == sum(windows) and np.allclose(saved["m2"], live.m2, rtol=1e-5)


def test_a_servers_long_rows_rebuild_exactly_too(model_dir, tmp_path) -> None:
    """The pyfunc (and KServe, the same scoring path) cuts a long request row into windows too."""
    folder = _with_running_stats(model_dir, tmp_path / "model", min_clips=2, window=3)
    context = SimpleNamespace(artifacts={"model_dir": str(folder)},
                              model_config={"prediction_log": str(tmp_path / "log"), "max_window_s": 1.0,
                                            "hop_s": 1.0})
    py = AffectflowPyfunc()
    py.load_context(context)
    py.speech = SpeechCheck.off()
    waves = [*_waves(1, seed=3, duration=4.0), *_waves(1, seed=4), *_waves(1, seed=5, duration=3.0)]
    py.predict(None, pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [SR] * 3}))
    py.rec.recorder.log.flush()
    df = read_log(tmp_path / "log")
    live = py.rec.deployment.stats
    assert df["windows"][0] > 1 and df["windows"][2] > 1 and live.clips == df["windows"].sum() > live.window
    rebuilt = rebuild_deployment(py.rec.meta, df)
    assert rebuilt.clips == live.clips and rebuilt.weight == pytest.approx(live.weight, rel=1e-9)
    assert np.allclose(rebuilt.mean, live.mean, rtol=1e-5) and np.allclose(rebuilt.m2, live.m2, rtol=1e-5)


def test_windows_scored_before_a_file_failed_count_in_the_rebuild(model_dir, tmp_path) -> None:
    """The running statistics took the windows of a file that failed later (here: every window's
    probabilities are non-finite); its record keeps them, and the rebuild counts them."""
    folder = _with_running_stats(model_dir, tmp_path / "model", min_clips=2, window=1000)
    params = base_params({"predict.decode_workers": 1, "predict.threads": 1, "predict.max_window_s": 1.0,
                          "predict.hop_s": 1.0, "predict.batch_size": 1, "paths.workdir": str(tmp_path / "w"),
                          "audio.min_speech_s": 0.0})
    clips = [write_clip(tmp_path / f"in/{k}.wav", CLASSES[k], seed=k, duration=d) for k, d in enumerate([2.0, 3.0])]
    rec = load_model_dir(folder)
    attach_recorder(rec, tmp_path / "log", params.monitor, str(folder), "predict")
    backend = RecognizerBackend(str(folder), rec, torch.device("cpu"), 2)
    first_file_windows = WindowReader(SR, 1.0, 1.0).open(str(clips[0])).n_windows  # batch_size 1: a call a window
    score = backend.score
    calls = iter(range(100))

    def poisoned(arrays):  # the second file's windows come back non-finite
        out = score(arrays)
        return np.full_like(out, np.nan) if next(calls) >= first_file_windows else out

    backend.score = poisoned
    res = predict_paths(params, clips, backend=backend, report=lambda m: None)
    df = read_log(tmp_path / "log")
    assert [p.status for p in res.predictions] == list(df["status"]) == ["ok", "error"]
    live = rec.deployment.stats
    assert df["windows"][0] == first_file_windows > 1 and df["windows"][1] > 1
    assert live.clips == first_file_windows + 1  # the failed file's first window consumed, its later ones dropped
    assert [len(f) for f in df["window_frames"]] == [first_file_windows, 1]
    rebuilt = rebuild_deployment(rec.meta, df)
    assert rebuilt.clips == live.clips and np.allclose(rebuilt.mean, live.mean, rtol=1e-5)
    assert np.allclose(rebuilt.m2, live.m2, rtol=1e-5)


def test_affectflow_predict_logs_a_record_per_file_including_failures(model_dir, tmp_path) -> None:
    params = base_params({"predict.decode_workers": 1, "predict.threads": 1, "paths.workdir": str(tmp_path / "w"),
                          "audio.min_speech_s": 0.0})
    good = [write_clip(tmp_path / f"in/{k}.wav", CLASSES[k], seed=k) for k in range(3)]
    missing = tmp_path / "in/missing.wav"
    rec = load_model_dir(model_dir)
    backend = RecognizerBackend(str(model_dir), rec, torch.device("cpu"), 2)
    attach_recorder(rec, tmp_path / "log", params.monitor, str(model_dir), "predict")
    res = predict_paths(params, [*good, missing], backend=backend, report=lambda m: None)
    df = read_log(tmp_path / "log")  # predict flushes at the end of its run
    assert list(df["item"]) == [str(p) for p in [*good, missing]]
    assert list(df["status"]) == ["ok", "ok", "ok", "error"]
    for p, (_, row) in zip(res.predictions[:3], df.head(3).iterrows(), strict=True):
        assert np.allclose(row["probabilities"], p.probabilities, atol=1e-6)
        assert len(row["summary"]) == 16 and row["windows"] == 1
    assert df.iloc[3]["summary"] is None and df.iloc[3]["probabilities"] is None


def test_load_backend_logs_to_the_workdir_by_default_and_not_when_disabled(model_dir, tmp_path) -> None:
    clip = write_clip(tmp_path / "a.wav", "sad", seed=1)
    on = base_params({"predict.decode_workers": 1, "paths.workdir": str(tmp_path / "w1"), "audio.min_speech_s": 0.0})
    predict_paths(on, [clip], model_uri=str(model_dir))
    assert len(read_log(tmp_path / "w1" / "prediction_log")) == 1
    off = base_params({"predict.decode_workers": 1, "paths.workdir": str(tmp_path / "w2"), "audio.min_speech_s": 0.0,
                       "monitor.enabled": False})
    predict_paths(off, [clip], model_uri=str(model_dir))
    assert not (tmp_path / "w2" / "prediction_log").exists()


def test_audio_is_kept_only_with_keep_audio_and_old_partitions_are_pruned(model_dir, tmp_path) -> None:
    log = tmp_path / "log"
    py = _pyfunc(model_dir, log, keep_audio=True)
    days = iter([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 3 + [dt.datetime(2026, 3, 1, tzinfo=dt.UTC)] * 3)
    py.rec.recorder.log.clock = lambda: next(days)
    for _ in range(2):
        py.predict(None, pd.DataFrame({"audio": [_waves(1)[0].tolist()], "sample_rate": [SR]}))
        py.rec.recorder.log.flush()
    df = read_log(log)
    kept = Path(df.iloc[0]["audio"])
    x, sr = sf.read(kept)
    assert sr == SR and len(x) == len(_waves(1)[0])  # the row's audio, at its rate
    removed = prune(log, retention_days=30, now=dt.datetime(2026, 3, 2, tzinfo=dt.UTC))
    assert removed == 2 and not kept.exists()  # January's part and audio
    assert len(read_log(log)) == 1


class _Bucket:
    """Just what `affectflow predict` asks of an S3 store for its inputs: objects in memory."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.settings = SimpleNamespace(max_concurrency=2)

    def list(self, uri: str) -> list:
        from affectflow.storage.s3 import ObjectInfo, S3Uri

        u = S3Uri.parse(uri)
        return [ObjectInfo(S3Uri.parse(k).key, len(v), "") for k, v in self.objects.items()
                if S3Uri.parse(k).bucket == u.bucket and S3Uri.parse(k).key.startswith(u.key)]

    def download(self, uri: str, local: str | Path) -> Path:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Path(local).write_bytes(self.objects[uri])
        return Path(local)


def test_affectflow_predict_keeps_the_audio_of_s3_inputs_too(model_dir, tmp_path, monkeypatch) -> None:
    """keep_audio keeps every input predict accepts: a local file and an s3:// object alike, each as
    its own bytes (the object's downloaded copy, kept before the run's temporary folder goes)."""
    import affectflow.serving.predict.engine as engine

    local = write_clip(tmp_path / "in/local.wav", "sad", seed=1)
    remote = write_clip(tmp_path / "elsewhere/remote.wav", "angry", seed=2, duration=1.5)
    bucket = _Bucket({"s3://bucket/traffic/remote.wav": remote.read_bytes()})
    monkeypatch.setattr(engine, "store_for", lambda params: bucket)
    params = base_params({"predict.decode_workers": 1, "predict.threads": 1, "paths.workdir": str(tmp_path / "w"),
                          "audio.min_speech_s": 0.0, "monitor.keep_audio": True})
    rec = load_model_dir(model_dir)
    attach_recorder(rec, tmp_path / "log", params.monitor, str(model_dir), "predict")
    res = predict_paths(params, [str(local), "s3://bucket/traffic/"], report=lambda m: None,
                        backend=RecognizerBackend(str(model_dir), rec, torch.device("cpu"), 2))
    df = read_log(tmp_path / "log")
    assert [p.status for p in res.predictions] == ["ok", "ok"]
    assert list(df["item"]) == [str(local), "s3://bucket/traffic/remote.wav"]  # the row names the URI
    kept = [Path(a) for a in df["audio"]]
    assert [k.read_bytes() for k in kept] == [local.read_bytes(), remote.read_bytes()]
    assert all(k.suffix == ".wav" and k.is_relative_to(tmp_path / "log" / "audio") for k in kept)


def test_a_log_that_cannot_be_written_keeps_its_records_and_never_fails_the_request(model_dir, tmp_path) -> None:
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log folder should be")
    py = _pyfunc(model_dir, blocker)
    out = py.predict(None, pd.DataFrame({"audio": [_waves(1)[0].tolist()], "sample_rate": [SR]}))
    assert list(out["status"]) == ["ok"]
    assert py.rec.recorder.log.flush() is None and len(py.rec.recorder.log.buffer) == 1
    py.rec.recorder.log.buffer.clear()  # nothing left for the exit-time flush to warn about after pytest's streams close


def test_a_part_that_is_not_a_prediction_log_is_named(tmp_path) -> None:
    bad = tmp_path / "log" / "date=2026-01-01" / "part-x.parquet"
    bad.parent.mkdir(parents=True)
    pd.DataFrame({"time": [1]}).to_parquet(bad)
    with pytest.raises(PredictionLogError, match=r"part-x.parquet: field 'source' missing"):
        read_log(tmp_path / "log")


def test_a_part_written_before_the_dimension_fields_reads_with_them_null(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from affectflow.serving.prediction_log import ADDED_FIELDS, SCHEMA

    older = pa.schema([f for f in SCHEMA if f.name not in ADDED_FIELDS])
    part = tmp_path / "log" / "date=2026-01-01" / "part-old.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "source": "predict",
                                          "status": "ok", "item": "a.wav", "probabilities": [0.5, 0.5]}],
                                        schema=older), part)
    df = read_log(tmp_path / "log")
    assert list(df.columns) == SCHEMA.names and df["dimensions"].isna().all() and df["dimension_names"].isna().all()
    assert list(df["probabilities"][0]) == [0.5, 0.5]


def test_the_buffer_is_written_when_full(tmp_path) -> None:
    plog = PredictionLog(tmp_path / "log", flush_records=2, flush_s=3600)
    rec = {"time": dt.datetime.now(dt.UTC), "source": "pyfunc", "status": "ok", "item": "row 0"}
    plog.append([rec])
    assert plog.parts_written == 0 and plog.writer is None
    plog.append([rec])
    plog.writer.join()  # written in the background: the request that filled the buffer does not wait
    assert plog.parts_written == 1 and len(read_log(tmp_path / "log")) == 2


def test_monitor_defaults_keep_audio_off() -> None:
    assert MonitorConfig().keep_audio is False and ServingConfig().prediction_log == ""
