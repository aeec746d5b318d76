"""Bad input in the CLI and the stages: one `error:` line and a non-zero exit, or a documented
outcome (a quarantine row, a summary count), never a traceback or a silent wrong answer.

The rows of `CLI_CASES` and the tests below are the "Bad input" section of the README (the served
model's table is `BAD_REQUESTS` in tests/integration/test_serve.py). Each CLI case builds its input
in a temporary folder and runs `affectflow.cli.main` in this process: an exception the CLI does
not turn into its one line would fail the test, as it would show a traceback to a user.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from affectflow import audio, cli
from affectflow.config import load_params
from affectflow.contracts.manifest import read_manifest
from affectflow.corpora.demo import utterance
from affectflow.stages.ingest import ingest, probe
from affectflow.storage import atomic_dir, atomic_write_json

SR = 16000
CLASSES = ["angry", "sad"]
S3_TIMEOUT_S = 1
S3_BOUND_S = 20.0
"""An endpoint that never answers must fail well within this (1 attempt of 1 s, plus start-up)."""


# ----------------------------------------------------------------------------- inputs
def clip(path: Path, seconds: float = 0.6, seed: int = 0, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, utterance("angry", speaker=seed % 4 + 1, seed=seed, sr=sr, duration=seconds), sr)
    return path


def cut(path: Path, keep: float = 0.6) -> Path:
    """Drop the tail of a file, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corpus(folder: Path, extra: list[tuple[str, str, str]] = (), speakers: int = 4) -> Path:
    """A CSV corpus: two clips per speaker (angry, sad) plus `extra` rows; returns the CSV."""
    rows = []
    for s in range(speakers):
        for k, emo in enumerate(CLASSES):
            rel = f"audio/s{s}_{emo}.wav"
            clip(folder / rel, seed=10 * s + k)
            rows.append((rel, f"spk{s}", emo))
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "emotion"])
        w.writerows([*rows, *extra])
    return folder / "labels.csv"


def params_file(tmp: Path, **sections: Any) -> Path:
    """A params.yaml for the CSV corpus at tmp/mine, workdir in tmp/work, plus `sections`."""
    tree: dict[str, Any] = {
        "paths": {"workdir": str(tmp / "work"), "data_root": str(tmp)},
        "ingest": {"corpora": [{"name": "mine", "adapter": "csv", "root": "mine/labels.csv"}],
                   "classes": CLASSES, "workers": 1},
        "splits": {"n_folds": 2},
        "features": {"workers": 1, "kinds": ["logmel"]},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        "predict": {"decode_workers": 1, "threads": 1},
        "audio": {"min_speech_s": 0.0},  # generated clips are not speech; test_speech.py turns the check on
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def ingested(tmp: Path) -> tuple[Path, Path]:
    """params.yaml and the manifest of an ingested CSV corpus."""
    corpus(tmp / "mine")
    p = params_file(tmp)
    return p, ingest(load_params(p)).manifest


def model_folder(tmp: Path) -> Path:
    """A tiny untrained model folder in the format train writes (what predict loads)."""
    import torch

    from affectflow.config import CnnConfig
    from affectflow.contracts.model_folder import ModelMeta, write_model_folder
    from affectflow.features.logmel import LogMel
    from affectflow.models import build_model
    from affectflow.models.data import compute_stats

    params = load_params(None)
    mels = LogMel(params.features.logmel, SR).batch([utterance("sad", 1, s, SR, 1.0) for s in range(2)])
    cfg = CnnConfig(channels=[4, 8], gru_hidden=8, attention_hidden=8).model_dump(mode="json")
    torch.manual_seed(0)
    model = build_model("cnn_bigru", cfg, params.features.logmel.n_mels, len(CLASSES)).eval()
    meta = ModelMeta(arch="cnn_bigru", classes=CLASSES, feature="logmel",
                     feature_config=params.features.logmel.model_dump(mode="json"),
                     audio={**params.audio.model_dump(mode="json"), "min_speech_s": 0.0}, normalization=compute_stats(mels, "global").as_dict(),
                     arch_config=cfg, input_dim=params.features.logmel.n_mels)
    return write_model_folder(tmp / "model", model, meta)


@pytest.fixture
def never_answers() -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that accepts connections and never answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed at teardown
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for conn in held:
        conn.close()


# ----------------------------------------------------------------------------- the CLI table
def _params_not_utf8(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    (tmp / "p.yaml").write_bytes("train:\n  epochs: 3  # café\n".encode("latin-1"))
    return ["train", "--params", str(tmp / "p.yaml")]


def _epochs_yes(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    (tmp / "p.yaml").write_text("train:\n  epochs: yes\n")
    return ["train", "--params", str(tmp / "p.yaml")]


def _epochs_override(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    return ["train", "--params", str(params_file(tmp)), "--set", "train.epochs=true"]


def _duplicate_key(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    (tmp / "p.yaml").write_text("train:\n  epochs: 3\n  epochs: 30\n")
    return ["train", "--params", str(tmp / "p.yaml")]


def _promote_abc(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    return ["registry", "promote", "--version", "abc", "--params", str(params_file(tmp))]


def _features_file_changed(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    p, manifest = ingested(tmp)
    row = read_manifest(manifest).iloc[0]
    cut(Path(row["path"]))  # after ingest: the manifest's sha256 is no longer this file's
    ctx.update(path=row["path"], sha=row["sha256"], features=tmp / "features")
    return ["features", "--params", str(p), "--manifest", str(manifest), "--out", str(tmp / "features")]


def _features_not_audio(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    from affectflow.contracts.manifest import write_manifest

    p, manifest = ingested(tmp)
    df = read_manifest(manifest)
    bad = tmp / "mine" / "audio" / "noise.wav"
    bad.write_bytes(b"RIFF but not really audio" * 40)
    df.loc[0, ["path", "sha256"]] = [str(bad), audio.file_hash(bad)]  # hash right, content no audio
    write_manifest(df, tmp / "bad.parquet")
    ctx.update(path=str(bad))
    return ["features", "--params", str(p), "--manifest", str(tmp / "bad.parquet"), "--out", str(tmp / "features")]


def _csv_not_utf8(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    labels = corpus(tmp / "mine")
    with labels.open("ab") as f:
        f.write("audio/s0_angry.wav,José,angry\n".encode("latin-1"))
    ctx.update(path=str(labels))
    return ["ingest", "--params", str(params_file(tmp))]


def _s3_never_answers(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    spec = {"name": "remote", "adapter": "ravdess", "root": "s3://affectflow-test/ravdess"}
    p = params_file(tmp, ingest={"corpora": [spec]},
                    s3={"endpoint_url": ctx["endpoint"], "read_timeout_s": S3_TIMEOUT_S, "max_attempts": 1})
    return ["ingest", "--params", str(p)]


def _predict_truncated(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    f = cut(clip(tmp / "cut.wav", seconds=3.3), keep=0.5)
    ctx.update(path=str(f), ingest_says=_ingest_reason(f))
    return ["predict", str(f), "--model", str(model_folder(tmp)), "--params", str(params_file(tmp))]


def _predict_too_short(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    f = tmp / "short.wav"
    sf.write(f, 0.1 * np.sin(np.arange(SR // 10) / 5.0), SR)  # 0.1 s
    ctx.update(path=str(f), ingest_says=_ingest_reason(f))
    return ["predict", str(f), "--model", str(model_folder(tmp)), "--params", str(params_file(tmp))]


def _predict_1hz_header(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    f = tmp / "one_hz.wav"
    sf.write(f, np.zeros(62_000, np.float32), 1, subtype="PCM_16")  # 124 KB, "17 hours" at 1 Hz
    ctx.update(path=str(f), ingest_says=_ingest_reason(f))
    return ["predict", str(f), "--model", str(model_folder(tmp)), "--params", str(params_file(tmp))]


def _predict_float_out_of_range(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    f = tmp / "loud.wav"
    wave = utterance("sad", 1, 0, SR, 1.0)
    sf.write(f, 3.5 * wave / np.abs(wave).max(), SR, subtype="FLOAT")  # unnormalised float audio
    ctx.update(path=str(f), ingest_says=_ingest_reason(f))
    return ["predict", str(f), "--model", str(model_folder(tmp)), "--params", str(params_file(tmp))]


def _no_params_file(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    os.chdir(tmp)  # restored by the test (monkeypatch.chdir below)
    ctx.update(cwd=str(tmp))
    return ["validate"]


def _empty_params_file(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    (tmp / "p.yaml").write_text("# nothing set yet\n")
    return ["train", "--params", str(tmp / "p.yaml")]


def _registry_list_mistyped_store(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    db = tmp / "typo" / "mlflow.db"
    ctx.update(path=str(db))
    return ["registry", "list", "--defaults", "--set", f"tracking.uri=sqlite:///{db}"]


def _csv_http_row(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    labels = corpus(tmp / "mine", extra=[("http://example.org/a.wav", "spk0", "sad")])
    ctx.update(path=str(labels))
    return ["ingest", "--params", str(params_file(tmp))]


def _predict_file_uri_row(tmp: Path, ctx: dict[str, Any]) -> list[str]:
    f = clip(tmp / "a.wav")
    (tmp / "list.csv").write_text(f"path\n{f}\nfile://{f}\n")
    ctx.update(path=str(tmp / "list.csv"), file=str(f))
    return ["predict", str(tmp / "list.csv"), "--model", str(model_folder(tmp)), "--params", str(params_file(tmp))]


def _ingest_reason(f: Path) -> str:
    try:
        probe(str(f), load_params(None).audio.min_duration_s)
    except audio.AudioError as e:
        return e.reason
    raise AssertionError(f"ingest would take {f}")


CliCase = tuple[Callable[[Path, dict[str, Any]], list[str]], int, str]
CLI_CASES: dict[str, CliCase] = {
    # case: (make the input -> argv, exit code, text of the one `error:` line; {path} is filled in)
    "params.yaml not UTF-8": (_params_not_utf8, 2, "p.yaml: not UTF-8 text (byte 25: invalid continuation byte)"),
    "epochs: yes": (_epochs_yes, 2, "p.yaml: train.epochs: Input should be a valid integer"),
    "--set train.epochs=true": (_epochs_override, 2,
                                "override train.epochs=true: train.epochs: Input should be a valid integer"),
    "duplicate YAML key": (_duplicate_key, 2, "p.yaml: not valid YAML: key 'epochs' appears twice (lines 2 and 3)"),
    "registry promote --version abc": (_promote_abc, 1, "'version' must be an integer, got 'abc'"),
    "features: file changed after ingest": (_features_file_changed, 1,
                                            "{path}: file changed since ingest: "),
    "features: bytes that are not audio": (_features_not_audio, 1, "{path}: cannot decode audio ("),
    "ingest: CSV manifest not UTF-8": (_csv_not_utf8, 1, "{path}: row 9 (line 10), field 'speaker': not UTF-8 text "
                                                         "(byte 0xe9 at character 4); save the CSV as UTF-8"),
    "ingest: S3 endpoint that never answers": (_s3_never_answers, 1,
                                               "s3://affectflow-test/ravdess: cannot list objects: S3 endpoint "
                                               "{endpoint} accepted the connection but did not answer within "
                                               f"s3.read_timeout_s={S3_TIMEOUT_S} s (1 attempt(s), s3.max_attempts)"),
    "predict: truncated WAV": (_predict_truncated, 1, "{path}: truncated audio: 'RIFF' chunk declares"),
    "predict: clip below audio.min_duration_s": (_predict_too_short, 1,
                                                 "{path}: too short: 0.100 s < 0.3 s (audio.min_duration_s)"),
    "no params.yaml and no --defaults": (_no_params_file, 2,
                                         "no params.yaml in {cwd}: pass --params FILE, or --defaults to run on "
                                         "the built-in defaults"),
    "a params file without settings": (_empty_params_file, 2, "p.yaml: no settings in it (empty); fill it in, or "
                                                              "pass --defaults"),
    "registry list on a tracking.uri that does not exist": (_registry_list_mistyped_store, 1,
                                                            "{path} does not exist (a mistyped path?); registry "
                                                            "commands read an existing store"),
    "ingest: an http:// row in a CSV manifest": (_csv_http_row, 1,
                                                 "{path}: row 9 (line 10), field 'path': URI scheme 'http://' is not "
                                                 "supported (local paths and s3:// only)"),
    "predict: a file:// row in a manifest": (_predict_file_uri_row, 1,
                                             "{path}: row 1: field 'path': URI scheme 'file://' is not supported "
                                             "(local paths and s3:// only); write the local path ({file})"),
    "predict: WAV whose header says 1 Hz": (_predict_1hz_header, 1,
                                            "{path}: sample rate 1 Hz is outside 1000..768000 Hz"),
    "predict: float WAV outside ±1": (_predict_float_out_of_range, 1,
                                      "{path}: samples outside [-1, 1] (peak 3.5"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_error_line_and_a_nonzero_exit(case, tmp_path, capsys, monkeypatch, request):
    make, code, expected = CLI_CASES[case]
    ctx: dict[str, Any] = {}
    if "S3" in case:
        ctx["endpoint"] = request.getfixturevalue("never_answers")
        for var, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull}.items():
            monkeypatch.setenv(var, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.chdir(os.getcwd())  # a case may chdir (no params.yaml); undone after the test
    argv = make(tmp_path, ctx)
    capsys.readouterr()
    started = time.monotonic()
    assert cli.main(argv) == code
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(**ctx) in lines[0], lines[0]
    if "ingest_says" in ctx:  # predict refuses what ingest quarantines, in the same words
        assert lines[0] == f"error: {ctx['path']}: {ctx['ingest_says']}"
    if "sha" in ctx:  # nothing was cached under the manifest's key for the changed file
        assert not any(ctx["sha"] in p.read_text() for p in Path(ctx["features"]).rglob("shard-*.json"))
    if "endpoint" in ctx:
        assert elapsed < S3_BOUND_S
    if case.startswith("registry list"):  # nothing created where the typo points
        assert not Path(ctx["path"]).parent.exists()
    if case.startswith("no params.yaml"):  # --defaults says "the defaults are what I mean"
        assert cli.main(["dvc", "--defaults", "--set", f"paths.workdir={tmp_path}/w", "--out", "d.yaml"]) == 0


# ----------------------------------------------------------------------------- ingest outcomes
def test_x_wav_and_x_flac_in_one_folder_get_their_own_ids(tmp_path):
    labels = corpus(tmp_path / "mine")
    same = tmp_path / "mine" / "audio" / "s0_angry.flac"  # beside s0_angry.wav: other audio, same stem
    sf.write(same, utterance("sad", speaker=2, seed=99, sr=SR, duration=0.6), SR)
    with labels.open("a", newline="") as f:
        csv.writer(f).writerow(["audio/s0_angry.flac", "spk0", "sad"])
    for policy in ("fail", "skip"):
        res = ingest(load_params(params_file(tmp_path), {"ingest.on_bad_audio": policy}))
        ids = read_manifest(res.manifest).set_index("path")["utt_id"]
        assert ids[str(same)] == "mine/audio/s0_angry.flac"
        assert ids[str(same.with_suffix(".wav"))] == "mine/audio/s0_angry.wav"
        assert ids[str(tmp_path / "mine" / "audio" / "s1_sad.wav")] == "mine/audio/s1_sad"  # others keep theirs
        assert res.summary["clips"] == 9 and res.summary["quarantined"] == 0


def test_a_file_listed_twice_is_quarantined_in_skip_mode(tmp_path):
    corpus(tmp_path / "mine", extra=[("audio/s0_angry.wav", "spk3", "sad")])
    p = params_file(tmp_path)
    res = ingest(load_params(p, {"ingest.on_bad_audio": "skip"}))
    q = pd.read_csv(res.manifest.parent / "quarantine.csv")
    assert q.to_dict("records") == [{"utt_id": "mine/audio/s0_angry", "corpus": "mine",
                                     "path": str(tmp_path / "mine" / "audio" / "s0_angry.wav"),
                                     "reason": "duplicate utterance id: listed twice"}]
    df = read_manifest(res.manifest)
    assert len(df) == 8 and df.set_index("utt_id").loc["mine/audio/s0_angry", "emotion"] == "angry"  # the first
    assert res.summary["quarantined"] == 1
    from affectflow.stages.ingest import IngestError

    with pytest.raises(IngestError, match=r"2 clips share utterance ids, e\.g\. 'mine/audio/s0_angry'.*"
                                          r"on_bad_audio: skip to quarantine all but the first"):
        ingest(load_params(p))


def test_byte_identical_clips_are_counted_and_warned_at_ingest(tmp_path, caplog):
    labels = corpus(tmp_path / "mine")
    copy = tmp_path / "mine" / "audio" / "copy.wav"
    copy.write_bytes((tmp_path / "mine" / "audio" / "s1_angry.wav").read_bytes())
    with labels.open("a", newline="") as f:
        csv.writer(f).writerow(["audio/copy.wav", "spk1", "angry"])
    with caplog.at_level(logging.WARNING, logger="affectflow.stages.ingest"):
        res = ingest(load_params(params_file(tmp_path)))
    assert res.summary["duplicate_audio"] == {"groups": 1, "clips": 2,
                                              "examples": [["mine/audio/copy", "mine/audio/s1_angry"]]}
    assert "2 clips are byte-identical copies (1 groups), e.g. mine/audio/copy = mine/audio/s1_angry" in caplog.text
    assert len(read_manifest(res.manifest)) == 9  # kept: the validate stage judges copies


# ----------------------------------------------------------------------------- outputs and the umask
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"uar": 0.5})
        with atomic_dir(tmp_path / "model") as d:
            (d / "model.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask


def test_a_bad_waveform_is_an_error_in_the_library_too():
    """`predict_audio` with arrays: no silent NaN answer, no rate 0 taken as the model's."""
    from affectflow.serving.recognizer import load_audio

    with pytest.raises(audio.AudioError, match=r"waveform 1: audio contains NaN or infinite samples"):
        load_audio([np.zeros(100), np.array([0.0, np.nan])], SR)
    with pytest.raises(audio.AudioError, match=r"waveform 0: empty audio \(no samples\)"):
        load_audio([np.zeros(0)], SR)
    with pytest.raises(ValueError, match=r"input_rate: expected a positive whole number of Hz, got 0"):
        load_audio([np.zeros(100)], SR, input_rate=0)


def test_csv_bytes_that_are_not_utf8_name_file_line_and_field(tmp_path):
    """The corpus adapter and predict's manifests, on a Latin-1 file (what Excel often saves)."""
    from affectflow.contracts.manifest import ManifestError
    from affectflow.corpora import csv_manifest
    from affectflow.serving.predict import PredictInputError, manifest_paths

    header = tmp_path / "header.csv"
    header.write_bytes("path,sprecher·in,emotion\n".encode("latin-1", errors="replace").replace(b"\xb7", b"\xe9"))
    with pytest.raises(ManifestError, match=r"header\.csv: header \(line 1\), column 2: not UTF-8 text \(byte 0xe9"):
        csv_manifest.prepare(str(header))
    listing = tmp_path / "list.csv"
    listing.write_bytes("path\nok.wav\nrécit.wav\n".encode("latin-1"))
    with pytest.raises(PredictInputError, match=r"list\.csv: line 3, field 'path': not UTF-8 text \(byte 0xe9\); "
                                                r"save the CSV as UTF-8"):
        manifest_paths(listing)


# ----------------------------------------------------------------------------- input sanity (library)
def test_int16_values_stored_as_floats_are_rescaled_with_a_warning(tmp_path, caplog):
    wave = utterance("sad", 1, 0, SR, 1.0)
    as_int = np.round(wave * 32767).astype(np.float32)
    f = tmp_path / "int_as_float.wav"
    sf.write(f, as_int, SR, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="affectflow.audio"):
        x = audio.load(f, SR)
    assert np.abs(x).max() <= 1.0 and np.allclose(x, wave, atol=1e-4)
    assert "taken as int16 values and rescaled" in caplog.text
    assert np.allclose(audio.check_samples(as_int.tolist(), "row 0"), x, atol=1e-6)  # a request's waveform too


def test_float_audio_outside_one_is_refused_everywhere_it_enters(tmp_path):
    with pytest.raises(audio.AudioError, match=r"row 0: samples outside \[-1, 1\] \(peak 2.5\)"):
        audio.check_samples([0.1, -2.5, 0.2], "row 0")
    # a lossy decoder's overshoot (up to audio.CODEC_HEADROOM) is clipped, not refused
    assert audio.check_samples([0.1, -1.2, 1.05], "row 0").tolist() == pytest.approx([0.1, -1.0, 1.0])
    f = tmp_path / "loud.wav"
    sf.write(f, np.full(SR, 2.5, np.float32) * np.sin(np.arange(SR) / 7.0), SR, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match=r"samples outside \[-1, 1\]"):
        probe(str(f))  # ingest quarantines it (skip) or stops (fail)
    huge = tmp_path / "huge.wav"
    sf.write(huge, np.full(SR, 1e30, np.float32), SR, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match=r"peak 1e\+30"):
        audio.load(huge, SR)


def test_resampling_never_leaves_full_scale():
    t = np.arange(44100) / 44100
    square = np.sign(np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # full scale: overshoots when filtered
    out = audio.resample(square, 44100, SR)
    assert np.abs(out).max() <= 1.0
    with pytest.raises(audio.AudioError, match=r"sample rate 1 Hz is outside"):
        audio.resample(square[:10], 1, SR)


def test_a_header_rate_is_checked_before_decoding(tmp_path):
    f = tmp_path / "one_hz.wav"
    sf.write(f, np.zeros(62_000, np.float32), 1, subtype="PCM_16")
    for read in (lambda: audio.load(f, SR), lambda: audio.check_header(f), lambda: probe(str(f))):
        with pytest.raises(audio.AudioError, match=r"one_hz.wav: sample rate 1 Hz is outside 1000..768000 Hz"):
            read()


def test_a_truncated_model_file_is_named(tmp_path):
    from affectflow.contracts.model_folder import MODEL_FILE, ModelFolderError
    from affectflow.serving.recognizer import load_model_dir

    folder = model_folder(tmp_path)
    cut(folder / MODEL_FILE, keep=0.5)
    with pytest.raises(ModelFolderError, match=rf"{folder / MODEL_FILE}: cannot read it \(\d+ bytes; truncated"):
        load_model_dir(folder)


def test_nan_features_are_refused_naming_the_row_never_scored(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from affectflow.serving.pyfunc import AffectflowPyfunc, PyfuncInputError
    from affectflow.serving.recognizer import Featurizer

    model = AffectflowPyfunc()
    model.load_context(SimpleNamespace(artifacts={"model_dir": str(model_folder(tmp_path))}, model_config={}))
    real = Featurizer.__call__

    def nan_for_the_second(self, waves):
        feats = real(self, waves)
        if len(feats) > 1:
            feats[1] = np.full_like(feats[1], np.nan)
        return feats

    monkeypatch.setattr(Featurizer, "__call__", nan_for_the_second)
    rows = pd.DataFrame({"audio": [utterance("sad", 1, s, SR, 1.0).astype(np.float64) for s in range(2)],
                         "sample_rate": [SR, SR]})
    with pytest.raises(PyfuncInputError, match=r"pyfunc input row 1: \d+ of its logmel features are NaN or infinite"):
        model.predict(None, rows)


def test_predict_never_writes_nan(tmp_path):
    from affectflow.serving.predict import predict_paths, render

    class NanBackend:
        uri, classes, sample_rate = "stub", CLASSES, SR

        def predict(self, waves):
            return np.full((len(waves), len(CLASSES)), np.nan, np.float32)

    f = clip(tmp_path / "a.wav", seconds=1.0)
    res = predict_paths(load_params(params_file(tmp_path)), [str(f)], backend=NanBackend(), report=lambda m: None)
    assert res.predictions[0].error == "the model returned non-finite probabilities for this audio"
    assert "NaN" not in render(res, "json")


def test_a_request_rate_below_the_floor_is_the_rows_error_before_resampling():
    from affectflow.serving.pyfunc import parse_input

    rows = pd.DataFrame({"audio": [np.zeros(40).tolist()], "sample_rate": [10]})  # 4 s "at 10 Hz"
    with pytest.raises(audio.AudioError, match=r"pyfunc input row 0, column 'sample_rate': sample rate 10 Hz is outside "
                                               r"1000..768000 Hz"):
        parse_input(rows)


def test_a_one_speaker_manifest_fails_validation_with_an_empty_training_split(tmp_path):
    from affectflow.stages.validate import validate

    corpus(tmp_path / "mine", speakers=1)
    params = load_params(params_file(tmp_path))
    manifest = ingest(params).manifest
    assert set(read_manifest(manifest)["split"]) == {"test"}  # the one speaker is the test fold
    gate = validate(params, manifest, tmp_path / "validation")
    assert not gate.passed and "min_examples_per_class" in gate.summary["failed"]
    assert "train" in gate.summary["failures"]["min_examples_per_class"]


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from affectflow.storage import DiskFullError, atomic_write_json

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "out" / "summary.json"
    with pytest.raises(DiskFullError, match=rf"^{target}: no space left on the device while writing it "
                                            r"\(No space left on device\); \d+ MiB free there"):
        atomic_write_json(target, {"a": 1})
    assert list((tmp_path / "out").iterdir()) == []  # no temporary left behind, no partial output
    assert cli._message(DiskFullError(errno.ENOSPC, "x: no space")) == "x: no space"


def test_evaluate_refuses_nan_model_outputs_naming_the_clips(monkeypatch):
    from types import SimpleNamespace

    from affectflow.serving.recognizer import Scores
    from affectflow.stages import evaluate as ev

    monkeypatch.setattr(ev, "predict_scores", lambda rec, arrays, corpora=None, **_: Scores(
        np.array([[0.7, 0.3], [np.nan, np.nan]], np.float32)))
    rec = SimpleNamespace(feature="egemaps", classes=CLASSES)
    store = SimpleNamespace(load=lambda kind, ids: [np.zeros(88, np.float32) for _ in ids])
    rows = pd.DataFrame({"utt_id": ["mine/a", "mine/b"], "corpus": ["mine"] * 2, "speaker": ["s0", "s1"],
                         "gender": ["f", "m"], "emotion": CLASSES})
    with pytest.raises(ev.EvaluationError, match=r"1 of 2 clips get NaN or infinite model outputs .* e.g. mine/b; "
                                                  r"nothing is scored"):
        ev.predict_rows(rec, rows, store, CLASSES)


def test_help_and_other_commands_do_not_import_the_pipeline_group():
    """`affectflow --help` (and `predict`, `registry`) leave kfp unimported; `affectflow pipeline` loads it."""
    import subprocess
    import sys

    probe_code = ("import sys\nfrom affectflow import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                  "print('kfp' in sys.modules, 'pipeline' in cli.COMMANDS)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def loaded(*argv: str) -> str:
        out = subprocess.run([sys.executable, "-c", probe_code, *argv], capture_output=True, text=True, env=env,
                             check=True).stdout
        return out.strip().splitlines()[-1]

    assert loaded("--help") == "False False"
    assert loaded("pipeline", "--help") == "True True"


def test_a_read_only_tracking_store_is_refused_at_once(tmp_path, monkeypatch):
    """A read-only folder or mount (root ignores modes, so os.access stands in for the mount)."""
    from affectflow.tracking.uri import ensure_store

    db = tmp_path / "store" / "mlflow.db"
    assert ensure_store(f"sqlite:///{db}") == f"sqlite:///{db}"  # writable: fine
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real(p, mode))
    with pytest.raises(PermissionError, match=rf"tracking.uri sqlite:///{db}: {db.parent} is read-only here"):
        ensure_store(f"sqlite:///{db}")
