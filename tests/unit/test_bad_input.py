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
                     audio=params.audio.model_dump(mode="json"), normalization=compute_stats(mels, "global").as_dict(),
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
