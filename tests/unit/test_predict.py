"""`affectflow predict`: champion model on files outside the repo, folders, manifests, long audio in
windows, per-file errors, JSON and CSV output.

The models here are untrained (seeded random weights, normalisation from generated clips) but are
real model folders, logged as the affectflow pyfunc and registered with a `champion` alias: what is
checked is that prediction finds the right model and feeds it the right audio, not accuracy
(tests/integration/test_serve.py uses a trained one).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from base_settings import base_params

from affectflow import audio, cli
from affectflow.config import CnnConfig, Params, load_params
from affectflow.contracts.model_folder import ModelMeta
from affectflow.contracts.model_folder import write_model_folder as save_model_dir
from affectflow.corpora.demo import utterance
from affectflow.features.logmel import LogMel
from affectflow.models import build_model
from affectflow.models.data import compute_stats
from affectflow.serving.predict import (
    PredictInputError,
    RecognizerBackend,
    collect_inputs,
    predict_paths,
    window_spans,
)
from affectflow.serving.recognizer import load_model_dir, predict_audio

SR = 16000
CLASSES = ["neutral", "happy", "sad", "angry"]
MODEL_NAME = "affectflow-predict-test"


def make_model_dir(path: Path, seed: int) -> Path:
    """A tiny CNN-BiGRU model folder in the format train writes (weights seeded, not trained)."""
    params = load_params(None)
    waves = [utterance(c, speaker=s, seed=s, sr=SR, duration=1.0) for c in CLASSES for s in range(2)]
    mels = LogMel(params.features.logmel, SR).batch(waves)
    cfg = CnnConfig(channels=[4, 8], gru_hidden=8, attention_hidden=8).model_dump(mode="json")
    torch.manual_seed(seed)
    model = build_model("cnn_bigru", cfg, params.features.logmel.n_mels, len(CLASSES)).eval()
    meta = {"arch": "cnn_bigru", "classes": CLASSES, "feature": "logmel",
            "feature_config": params.features.logmel.model_dump(mode="json"),
            "audio": {**params.audio.model_dump(mode="json"), "min_speech_s": 0.0}, "normalization": compute_stats(mels, "global").as_dict(),
            "arch_config": cfg, "input_dim": params.features.logmel.n_mels}
    return save_model_dir(path, model, ModelMeta(**meta))


def write_clip(path: Path, emotion: str, seed: int, duration: float = 1.0, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, utterance(emotion, speaker=seed, seed=seed, sr=sr, duration=duration), sr)
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two model folders logged as pyfuncs and registered; `champion` points at the second."""
    from mlflow import MlflowClient

    from affectflow.serving.pyfunc import log_pyfunc

    root = tmp_path_factory.mktemp("predict-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("predict-tests", artifact_location=(root / "art").as_uri())
    dirs = [make_model_dir(root / f"model{seed}", seed) for seed in (1, 2)]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        versions = []
        for d in dirs:
            with mlflow.start_run(experiment_id=exp):
                info = log_pyfunc(d, name="model")
            versions.append(mlflow.register_model(info.model_uri, MODEL_NAME).version)
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_registered_model_alias(MODEL_NAME, "champion", versions[1])
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump({"tracking": {"uri": uri}, "registry": {"model_name": MODEL_NAME},
                                           "predict": {"decode_workers": 1, "threads": 1},
                                           "audio": {"min_speech_s": 0.0}}))  # generated clips: not speech
    return {"uri": uri, "experiment": exp, "dirs": dirs, "versions": versions, "params_file": params_file}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("predict-model") / "model", seed=3)


def params_with(**predict: Any) -> Params:
    return base_params({"predict.decode_workers": 1, "predict.threads": 1,
                              **{f"predict.{k}": v for k, v in predict.items()}})


def by_path(result: Any) -> dict[str, np.ndarray]:
    return {p.path: p.probabilities for p in result.predictions}


# ----------------------------------------------------------------------------- the champion, from the CLI
def test_cli_prints_probabilities_from_the_champion_for_a_file_outside_the_repo(registry, tmp_path, capsys):
    clip = write_clip(tmp_path / "elsewhere" / "clip.wav", "angry", seed=5)
    assert not clip.resolve().is_relative_to(Path(cli.__file__).resolve().parents[2])
    rc = cli.main(["predict", str(clip), "--params", str(registry["params_file"])])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert res["model"] == f"models:/{MODEL_NAME}@champion" and res["classes"] == CLASSES
    [pred] = res["predictions"]
    probs = np.array([pred["probabilities"][c] for c in CLASSES])
    assert pred["path"] == str(clip) and pred["error"] is None and pred["windows"] == 1
    assert np.isclose(probs.sum(), 1.0, atol=1e-5) and pred["label"] == CLASSES[int(probs.argmax())]
    # The champion (second version), not the other registered version.
    champion, other = (predict_audio(load_model_dir(d), [clip])[0] for d in registry["dirs"][::-1])
    assert np.allclose(probs, champion, atol=1e-5)
    assert not np.allclose(probs, other, atol=1e-3)
    assert "predicted 1/1 files" in err


def test_cli_takes_any_model_uri_and_a_local_model_folder(registry, tmp_path, capsys, monkeypatch):
    clip = write_clip(tmp_path / "c.flac", "sad", seed=6)
    first = registry["dirs"][0]
    expected = predict_audio(load_model_dir(first), [clip])[0]
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    for model in (f"models:/{MODEL_NAME}/{registry['versions'][0]}", str(first)):
        assert cli.main(["predict", str(clip), "--model", model, "--params", str(registry["params_file"])]) == 0
        res = json.loads(capsys.readouterr().out)
        got = np.array([res["predictions"][0]["probabilities"][c] for c in CLASSES])
        assert res["model"] == model and np.allclose(got, expected, atol=1e-5)
    # Loading pointed MLflow at the registry only for the load: nothing leaks to later runs or subprocesses.
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == before
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_missing_alias_is_a_clear_error(registry, tmp_path, capsys):
    clip = write_clip(tmp_path / "c.wav", "sad", seed=6)
    rc = cli.main(["predict", str(clip), "--params", str(registry["params_file"]),
                   "--model", f"models:/{MODEL_NAME}@nosuchalias"])
    err = capsys.readouterr().err
    assert rc == 1 and f"models:/{MODEL_NAME}@nosuchalias" in err and "nosuchalias" in err


# ----------------------------------------------------------------------------- inputs
def test_folders_and_manifests_expand_to_their_audio_files(model_dir, tmp_path):
    corpus = tmp_path / "corpus"
    files = [write_clip(corpus / "a" / "one.wav", "happy", 1), write_clip(corpus / "b" / "c" / "two.flac", "sad", 2),
             write_clip(corpus / "three.WAV", "neutral", 3)]
    (corpus / "notes.txt").write_text("not audio")
    (corpus / "._one.wav").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert collect_inputs([corpus]) == sorted(str(f) for f in files)
    pd.DataFrame({"path": ["a/one.wav", str(files[1])], "label": ["x", "y"]}).to_csv(corpus / "list.csv", index=False)
    pd.DataFrame({"path": [str(files[2])], "utt_id": ["u3"]}).to_parquet(tmp_path / "manifest.parquet")
    assert collect_inputs([corpus / "list.csv"]) == [str(corpus / "a" / "one.wav"), str(files[1])]
    params = params_with()
    res = predict_paths(params, [corpus, corpus / "list.csv", tmp_path / "manifest.parquet"], model_uri=str(model_dir))
    assert len(res.predictions) == 6 and not res.failed
    direct = predict_audio(load_model_dir(model_dir), files)
    got = by_path(res)
    for f, expected in zip(files, direct, strict=True):
        assert np.allclose(got[str(f)], expected, atol=1e-5)
    assert np.allclose(res.predictions[3].probabilities, direct[0], atol=1e-5)  # the manifest's relative row


def test_unusable_inputs_name_the_file_and_the_field(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictInputError, match="empty: folder holds no audio files"):
        collect_inputs([tmp_path / "empty"])
    pd.DataFrame({"file": ["x.wav"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(PredictInputError, match=r"m\.csv: manifest has no 'path' column"):
        collect_inputs([tmp_path / "m.csv"])
    pd.DataFrame({"path": ["x.wav", ""]}).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(PredictInputError, match=r"gap\.csv: row 1: field 'path' is empty"):
        collect_inputs([tmp_path / "gap.csv"])


# ----------------------------------------------------------------------------- long audio
def test_window_spans_cover_the_clip_with_full_windows():
    assert window_spans(100, 160, 80) == [(0, 100)]
    assert window_spans(160, 160, 80) == [(0, 160)]
    spans = window_spans(1000, 160, 80)
    assert spans[0] == (0, 160) and spans[-1] == (840, 1000)
    assert all(b - a == 160 for a, b in spans)
    assert all(s2[0] - s1[0] <= 80 for s1, s2 in itertools.pairwise(spans))


class SpyBackend:
    """The real backend, recording the size of every batch it is given."""

    def __init__(self, inner: RecognizerBackend):
        self.inner = inner
        self.uri, self.classes, self.sample_rate = inner.uri, inner.classes, inner.sample_rate
        self.batches: list[list[int]] = []

    def predict(self, waves: list[np.ndarray]) -> np.ndarray:
        self.batches.append([len(w) for w in waves])
        return self.inner.predict(waves)


def test_long_audio_is_scored_in_bounded_windows_and_averaged(model_dir, tmp_path):
    long_clip = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    parts = [utterance(CLASSES[k % 4], speaker=k, seed=k, sr=SR, duration=1.5) for k in range(40)]
    wave = np.concatenate(parts) + 0.001 * rng.standard_normal(sum(len(p) for p in parts)).astype(np.float32)
    sf.write(long_clip, wave, SR)  # 60 s
    short = write_clip(tmp_path / "short.wav", "happy", seed=9)
    params = params_with(max_window_s=4.0, hop_s=3.0, batch_size=4)
    rec = load_model_dir(model_dir)
    spy = SpyBackend(RecognizerBackend(str(model_dir), rec, torch.device("cpu"), 4))
    res = predict_paths(params, [long_clip, short], backend=spy)
    long_pred, short_pred = res.predictions
    spans = window_spans(len(wave), 4 * SR, 3 * SR)
    assert long_pred.windows == len(spans) == 20 and np.isclose(long_pred.duration_s, len(wave) / SR)
    assert long_pred.probabilities.shape == (len(CLASSES),)
    # Bounded: nothing longer than one window and no more than batch_size windows reach the model.
    assert max(max(b) for b in spy.batches) == 4 * SR and max(len(b) for b in spy.batches) <= 4
    assert sum(len(b) for b in spy.batches) == len(spans) + 1
    # The mean of the windows' probabilities, each window scored on its own.
    decoded = audio.load(long_clip, SR)
    per_window = predict_audio(rec, [decoded[a:b] for a, b in spans])
    assert np.allclose(long_pred.probabilities, per_window.mean(axis=0), atol=1e-4)
    assert np.allclose(short_pred.probabilities, predict_audio(rec, [short])[0], atol=1e-5)


def test_hop_longer_than_the_window_is_refused(model_dir, tmp_path):
    clip = write_clip(tmp_path / "c.wav", "sad", 1)
    with pytest.raises(ValueError, match=r"predict\.hop_s"):
        predict_paths(params_with(max_window_s=2.0, hop_s=3.0), [clip], model_uri=str(model_dir))


# ----------------------------------------------------------------------------- bad audio and output formats
@pytest.fixture
def mixed_folder(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "mixed"
    good = [write_clip(folder / "good1.wav", "happy", 1), write_clip(folder / "good2.flac", "sad", 2, sr=22050)]
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" + bytes(range(256)))
    empty = folder / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    nan = folder / "nan.wav"
    sf.write(nan, np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    return {"folder": folder, "good": good, "corrupt": corrupt, "empty": empty, "nan": nan,
            "missing": tmp_path / "missing.wav"}


def test_bad_audio_gives_a_clear_error_per_file_and_the_rest_is_predicted(model_dir, mixed_folder):
    said: list[str] = []
    m = mixed_folder
    res = predict_paths(params_with(batch_size=2), [m["folder"], m["missing"]], model_uri=str(model_dir),
                        report=said.append)
    errors = {p.path: p.error for p in res.failed}
    assert set(errors) == {str(m[k]) for k in ("corrupt", "empty", "nan", "missing")}
    assert "cannot" in errors[str(m["corrupt"])] or "unreadable" in errors[str(m["corrupt"])]
    assert errors[str(m["empty"])] == "empty audio (0 frames)"  # ingest's words
    assert "NaN" in errors[str(m["nan"])]
    assert errors[str(m["missing"])] == "file not found"
    assert sorted(said) == sorted(f"error: {p}: {e}" for p, e in errors.items())
    got = by_path(res)
    expected = predict_audio(load_model_dir(model_dir), m["good"])
    for f, e in zip(m["good"], expected, strict=True):
        assert np.allclose(got[str(f)], e, atol=1e-5)


def test_cli_csv_output_and_exit_codes(model_dir, mixed_folder, capsys):
    out = mixed_folder["folder"].parent / "preds.csv"
    argv = ["predict", str(mixed_folder["folder"]), "--model", str(model_dir), "--out", str(out),
            "--set", "predict.decode_workers=1", "--batch-size", "3"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: {mixed_folder['corrupt']}:" in err and "3 failed" in err
    df = pd.read_csv(out)
    assert list(df.columns) == ["path", "status", "label", *CLASSES, "duration_s", "windows", "error"]
    ok = df[df["error"].isna()]
    assert sorted(ok["path"]) == sorted(str(p) for p in mixed_folder["good"])
    assert np.allclose(ok[CLASSES].sum(axis=1), 1.0, atol=1e-4)
    assert (ok["label"] == ok[CLASSES].idxmax(axis=1)).all()
    bad = df[df["error"].notna()]
    assert bad[CLASSES].isna().all().all() and bad["label"].isna().all()
    assert cli.main([*argv, "--allow-errors", "--format", "json"]) == 0
    assert json.loads(out.read_text())["n_failed"] == 3


class FlakyBackend:
    """Fails on clips of one length (a clip the model cannot take), or on everything."""

    uri, classes, sample_rate = "fake", CLASSES, SR

    def __init__(self, bad_len: int | None):
        self.bad_len = bad_len

    def predict(self, waves: list[np.ndarray]) -> np.ndarray:
        if self.bad_len is None or any(len(w) == self.bad_len for w in waves):
            raise RuntimeError("shape mismatch")
        return np.tile(np.array([0.1, 0.2, 0.3, 0.4], np.float32), (len(waves), 1))


def test_a_clip_the_model_rejects_fails_alone_but_a_broken_model_stops_the_run(tmp_path):
    a = write_clip(tmp_path / "a.wav", "sad", 1, duration=1.0)
    b = write_clip(tmp_path / "b.wav", "sad", 2, duration=0.5)
    rejected = sf.info(b).frames
    res = predict_paths(params_with(batch_size=8), [a, b], backend=FlakyBackend(bad_len=rejected), report=lambda m: None)
    assert res.predictions[0].error is None and res.predictions[0].probabilities[3] == pytest.approx(0.4)
    assert res.predictions[1].error == "model cannot score this audio (RuntimeError: shape mismatch)"
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_paths(params_with(batch_size=8), [a, b], backend=FlakyBackend(bad_len=None))


class LoudnessModel(mlflow.pyfunc.PythonModel):
    """A pyfunc that is not affectflow's but keeps its contract: `audio` + `sample_rate` in, one
    probability column per class out (here: louder clips lean to `angry`)."""

    def predict(self, context, model_input, params=None):
        rms = np.array([float(np.sqrt(np.mean(np.square(np.asarray(a))))) for a in model_input["audio"]])
        angry = np.clip(rms * 4, 0.0, 1.0)
        rest = (1 - angry) / 3
        return pd.DataFrame({"neutral": rest, "happy": rest, "sad": rest, "angry": angry})


def test_any_pyfunc_with_the_audio_contract_is_called_through_predict(registry, tmp_path):
    from mlflow.models import infer_signature

    quiet, loud = (tmp_path / "quiet.wav", tmp_path / "loud.wav")
    wave = utterance("sad", speaker=1, seed=1, sr=SR, duration=1.0)
    wave = 0.5 * wave / np.abs(wave).max()
    sf.write(quiet, 0.1 * wave, SR)
    sf.write(loud, wave, SR)
    example = pd.DataFrame({"audio": [wave.astype(np.float64)], "sample_rate": [SR]})
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry["uri"])
    try:
        with mlflow.start_run(experiment_id=registry["experiment"]):
            info = mlflow.pyfunc.log_model(name="loudness", python_model=LoudnessModel(), pip_requirements=[],
                                           signature=infer_signature(example, LoudnessModel().predict(None, example)))
    finally:
        mlflow.set_tracking_uri(previous)
    params = load_params(registry["params_file"])
    res = predict_paths(params, [quiet, loud], model_uri=info.model_uri)
    assert res.classes == CLASSES and not res.failed
    q, lo = (p.probabilities for p in res.predictions)
    expected = [min(1.0, 4 * float(np.sqrt(np.mean(np.square(w))))) for w in (0.1 * wave, wave)]
    assert q[3] == pytest.approx(expected[0], abs=1e-3) and lo[3] == pytest.approx(expected[1], abs=1e-3)
    assert res.records()[1]["label"] == "angry"
