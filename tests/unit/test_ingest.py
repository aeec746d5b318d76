"""Ingest: label mapping, format probing, bad-audio handling and atomic outputs, on generated audio."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from base_settings import base_params

from affectflow import audio
from affectflow.audio import header_shortfall
from affectflow.contracts.manifest import COLUMNS, read_manifest
from affectflow.corpora.demo import make_ravdess_like, utterance
from affectflow.stages.ingest import IngestError, ingest, probe

SR = 16000
CLIP_S = 0.5


def clip(path: Path, emotion: str = "neutral", speaker: int = 1, seed: int = 0, sr: int = SR,
         channels: int = 1) -> Path:
    x = utterance(emotion, speaker, seed, sr, CLIP_S)
    if channels > 1:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)
    return path


def cut(path: Path, keep: float = 0.5) -> Path:
    """Drop the tail of a file, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def csv_corpus(folder: Path, rows: list[tuple[str, str, str]], name: str = "labels.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "emotion"])
        w.writerows(rows)
    return folder / name


def good_csv_corpus(folder: Path, speakers: int = 4, sr: int = SR, channels: int = 1) -> list[tuple[str, str, str]]:
    """Two clips (angry, sad) per speaker; returns the CSV rows (relative paths)."""
    rows = []
    for s in range(speakers):
        for k, emo in enumerate(("angry", "sad")):
            rel = f"audio/s{s}_{emo}.wav"
            clip(folder / rel, emo, s, seed=10 * s + k, sr=sr, channels=channels)
            rows.append((rel, f"spk{s}", emo))
    return rows


def params_for(tmp_path: Path, corpora: list[dict], **overrides):
    return base_params({
        "paths.workdir": str(tmp_path / "work"),
        "paths.data_root": str(tmp_path),
        "ingest.corpora": corpora,
        "ingest.workers": 1,
        **overrides,
    })


CSV_SPEC = {"name": "mine", "adapter": "csv", "root": "mine/labels.csv"}


@pytest.fixture(scope="module")
def rav_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rav") / "ravdess"
    return make_ravdess_like(root, actors=4, emotions=("neutral", "calm", "happy", "sad"),
                             clips_per_emotion=2, duration=CLIP_S)


# --------------------------------------------------------------------------- label mapping
def test_label_map_folds_calm_into_neutral_and_counts_dropped(rav_root, tmp_path):
    p = params_for(tmp_path, [{"name": "ravdess", "adapter": "ravdess", "root": str(rav_root)}],
                   **{"ingest.classes": ["neutral", "happy"], "ingest.label_map": {"calm": "neutral"},
                      "splits.n_folds": 2})
    res = ingest(p)
    df = read_manifest(res.manifest)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert res.summary["dropped_labels"] == {"ravdess:sad": 4 * 2}
    assert res.summary["classes"] == {"happy": 8, "neutral": 16}
    assert set(df.loc[df["label"] == "calm", "emotion"]) == {"neutral"}
    assert set(df["label"]) == {"neutral", "calm", "happy"}
    assert df["speaker"].str.startswith("ravdess/").all()
    assert json.loads((res.manifest.parent / "summary.json").read_text()) == res.summary
    assert res.manifest == tmp_path / "work" / "ingest" / "manifest.parquet"


def test_per_corpus_label_map_overrides_global(rav_root, tmp_path):
    spec = {"name": "ravdess", "adapter": "ravdess", "root": str(rav_root), "label_map": {"calm": "sad"}}
    p = params_for(tmp_path, [spec], **{"ingest.classes": ["neutral", "sad"],
                                        "ingest.label_map": {"calm": "neutral"}, "splits.n_folds": 2})
    df = read_manifest(ingest(p).manifest)
    assert set(df.loc[df["label"] == "calm", "emotion"]) == {"sad"}


def test_label_map_target_must_be_a_class(rav_root, tmp_path):
    p = params_for(tmp_path, [{"name": "ravdess", "adapter": "ravdess", "root": str(rav_root)}],
                   **{"ingest.classes": ["neutral", "happy"], "ingest.label_map": {"calm": "neutrall"}})
    with pytest.raises(IngestError, match=r"ingest\.label_map.*'calm': 'neutrall'"):
        ingest(p)


# --------------------------------------------------------------------------- formats
def test_csv_corpus_at_44k_stereo_is_recorded_then_loaded_as_16k_mono(tmp_path):
    folder = tmp_path / "mine"
    csv_corpus(folder, good_csv_corpus(folder, sr=44100, channels=2))
    res = ingest(params_for(tmp_path, [CSV_SPEC], **{"ingest.classes": ["angry", "sad"], "splits.n_folds": 2}))
    df = read_manifest(res.manifest)
    assert len(df) == 8
    assert set(df["sample_rate"]) == {44100} and set(df["channels"]) == {2}
    assert set(df["utt_id"]) == {f"mine/audio/s{s}_{e}" for s in range(4) for e in ("angry", "sad")}
    row = df.iloc[0]
    assert row["duration"] == pytest.approx(sf.info(row["path"]).duration)
    x = audio.load(row["path"], SR)
    assert x.ndim == 1 and abs(len(x) - row["duration"] * SR) <= 2


# --------------------------------------------------------------------------- bad audio
def make_bad(folder: Path, kind: str) -> str:
    """One unusable file of the given kind under `folder`; returns its CSV path cell."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        (folder / "bad_empty.wav").write_bytes(b"")
        return "bad_empty.wav"
    if kind == "truncated_flac":
        cut(clip(folder / "bad_cutflac.flac"))
        return "bad_cutflac.flac"
    if kind == "truncated_wav":
        cut(clip(folder / "bad_cutwav.wav"), keep=0.7)
        return "bad_cutwav.wav"
    if kind == "missing":
        return "bad_missing.wav"
    if kind == "not_audio":
        (folder / "bad_text.wav").write_text("this is a text file with an audio name\n" * 20)
        return "bad_text.wav"
    raise AssertionError(kind)


BAD_KINDS = {"empty": "unreadable", "truncated_flac": "truncated", "truncated_wav": "truncated",
             "missing": "not found", "not_audio": "unreadable"}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_audio_fail_names_the_file(tmp_path, kind):
    folder = tmp_path / "mine"
    rows = good_csv_corpus(folder)
    bad = make_bad(folder, kind)
    csv_corpus(folder, [*rows, (bad, "spk0", "angry")])
    p = params_for(tmp_path, [CSV_SPEC], **{"ingest.classes": ["angry", "sad"], "ingest.on_bad_audio": "fail"})
    with pytest.raises(IngestError) as err:
        ingest(p)
    assert str(folder / bad) in str(err.value) and BAD_KINDS[kind] in str(err.value)
    assert not (tmp_path / "work" / "ingest" / "manifest.parquet").exists()


def test_bad_audio_skip_quarantines_each_and_keeps_the_rest(tmp_path):
    folder = tmp_path / "mine"
    rows = good_csv_corpus(folder)
    bad = {kind: make_bad(folder, kind) for kind in BAD_KINDS}
    csv_corpus(folder, [*rows, *((cell, "spk1", "sad") for cell in bad.values())])
    p = params_for(tmp_path, [CSV_SPEC], **{"ingest.classes": ["angry", "sad"], "ingest.on_bad_audio": "skip",
                                            "ingest.workers": 2, "splits.n_folds": 2})
    res = ingest(p)
    q = pd.read_csv(res.manifest.parent / "quarantine.csv")
    assert list(q.columns) == ["utt_id", "corpus", "path", "reason"]
    reasons = dict(zip(q["path"], q["reason"], strict=True))
    assert set(reasons) == {str(folder / cell) for cell in bad.values()}
    for kind, cell in bad.items():
        assert BAD_KINDS[kind] in reasons[str(folder / cell)], (kind, reasons[str(folder / cell)])
    df = read_manifest(res.manifest)
    assert sorted(df["path"]) == sorted(str(folder / r[0]) for r in rows)
    assert res.summary["quarantined"] == len(BAD_KINDS) and res.summary["clips"] == len(rows)

    # A clean re-run removes the stale quarantine list.
    csv_corpus(folder, rows)
    ingest(p)
    assert not (res.manifest.parent / "quarantine.csv").exists()


def test_everything_quarantined_is_an_error_with_the_list(tmp_path):
    folder = tmp_path / "mine"
    csv_corpus(folder, [(make_bad(folder, "empty"), "s", "angry"), (make_bad(folder, "missing"), "s", "sad")])
    p = params_for(tmp_path, [CSV_SPEC], **{"ingest.classes": ["angry", "sad"], "ingest.on_bad_audio": "skip"})
    with pytest.raises(IngestError, match="every clip was quarantined"):
        ingest(p)
    assert len(pd.read_csv(tmp_path / "work" / "ingest" / "quarantine.csv")) == 2
    assert not (tmp_path / "work" / "ingest" / "manifest.parquet").exists()


def test_failing_ingest_leaves_previous_outputs_untouched(tmp_path):
    folder = tmp_path / "mine"
    rows = good_csv_corpus(folder)
    csv_corpus(folder, rows)
    p = params_for(tmp_path, [CSV_SPEC], **{"ingest.classes": ["angry", "sad"], "splits.n_folds": 2})
    res = ingest(p)
    out = res.manifest.parent
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    csv_corpus(folder, [*rows, (make_bad(folder, "truncated_wav"), "spk0", "angry")])
    with pytest.raises(IngestError, match=r"bad_cutwav\.wav"):
        ingest(p)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # no temp files either


def test_probe_flags_truncated_wav_that_decodes_cleanly(tmp_path):
    # libsndfile shortens a cut WAV's frame count and decodes what is left without an error;
    # only the header's declared sizes show the loss.
    path = cut(clip(tmp_path / "a.wav"), keep=0.7)
    x, _ = sf.read(path)
    assert len(x) > 0
    with pytest.raises(audio.AudioError, match="truncated audio: 'RIFF' chunk declares"):
        probe(str(path))
    assert probe(str(clip(tmp_path / "ok.wav")))["channels"] == 1
    assert header_shortfall("RIFF : 4294967295 (should be 8342)\ndata : 4294967295 (should be 8306)\n") is None
    assert header_shortfall("RIFF : 16700 (should be 16692)\n") is None  # 8-byte RIFF size quirk
    with pytest.raises(audio.AudioError, match="too short"):
        probe(str(clip(tmp_path / "short.wav")), min_duration_s=5.0)


# --------------------------------------------------------------------------- corpora through ingest
def test_iemocap_through_ingest_counts_no_agreement_apart(tmp_path):
    root = tmp_path / "iemocap"
    lines = [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "xxx"), ("Ses01F_impro01_F001", "exc"),
             ("Ses01F_impro01_M001", "oth"), ("Ses01F_impro01_F002", "ang"), ("Ses01F_impro01_M002", "sad"),
             ("Ses01F_impro01_F003", "xxx"), ("Ses01F_impro01_M003", "hap")]
    label_file = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    label_file.parent.mkdir(parents=True)
    label_file.write_text("".join(f"[{i}.0 - {i}.9]\t{u}\t{c}\t[3.0000, {1 + i % 4}.0000, 2.0000]\n"
                                  for i, (u, c) in enumerate(lines)))
    for i, (u, _c) in enumerate(lines):
        clip(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{u}.wav", speaker=i % 2 + 1, seed=i)
    p = params_for(tmp_path, [{"name": "iemocap", "adapter": "iemocap", "root": "iemocap"}],
                   **{"ingest.classes": ["neutral", "happy", "angry", "sad"],
                      "ingest.label_map": {"excited": "happy"}})
    res = ingest(p)
    assert res.summary["dropped_labels"] == {"iemocap:other(xxx)": 2, "iemocap:other(oth)": 1}
    df = read_manifest(res.manifest).set_index("utt_id")
    assert df.loc["iemocap/Ses01F_impro01_F001", "emotion"] == "happy"
    assert df.loc["iemocap/Ses01F_impro01_M002", "speaker"] == "iemocap/Ses01_M"
    assert df.loc["iemocap/Ses01F_impro01_M002", "arousal"] == 2.0  # i = 5 -> 1 + 5 % 4
    assert set(df["gender"]) == {"female", "male"}


def test_two_corpora_qualified_speakers_and_own_test_sets(rav_root, tmp_path):
    folder = tmp_path / "mine"
    csv_corpus(folder, good_csv_corpus(folder, speakers=4))
    p = params_for(tmp_path, [{"name": "ravdess", "adapter": "ravdess", "root": str(rav_root)},
                              {**CSV_SPEC, "role": "target"}],
                   **{"ingest.classes": ["neutral", "happy", "sad", "angry"], "splits.n_folds": 2})
    df = read_manifest(ingest(p).manifest)
    assert set(df.loc[df["corpus"] == "mine", "role"]) == {"target"}
    assert set(df.loc[df["corpus"] == "mine", "speaker"]) == {f"mine/spk{s}" for s in range(4)}
    for corpus in ("ravdess", "mine"):
        assert (df.loc[df["corpus"] == corpus, "split"] == "test").any(), corpus
    assert (df.groupby("speaker")["split"].nunique() == 1).all()


def test_duplicate_utterance_ids_are_an_error(tmp_path):
    folder = tmp_path / "mine"
    clip(folder / "a.wav")
    csv_corpus(folder, [("a.wav", "s1", "angry"), ("./a.wav", "s2", "sad")])
    p = params_for(tmp_path, [CSV_SPEC], **{"ingest.classes": ["angry", "sad"]})
    with pytest.raises(IngestError, match=r"share utterance ids, e\.g\. 'mine/a'"):
        ingest(p)


def test_missing_corpus_and_empty_corpus(tmp_path):
    p = params_for(tmp_path, [{"name": "ravdess", "adapter": "ravdess", "root": "nowhere"}])
    with pytest.raises(IngestError, match="nowhere: RAVDESS folder not found"):
        ingest(p)
    (tmp_path / "empty").mkdir()
    p = params_for(tmp_path, [{"name": "ravdess", "adapter": "ravdess", "root": "empty"}])
    with pytest.raises(IngestError, match="has no audio files"):
        ingest(p)


def test_clips_of_a_mirrored_s3_corpus_are_recorded_by_uri() -> None:
    """A later pod cannot read this pod's mirror: the manifest records the clip's s3:// URI."""
    from affectflow.stages.ingest import recorded_path

    mirror = "/pod/cache/s3/bucket/corpora/ravdess"
    assert recorded_path(f"{mirror}/Actor_01/a.wav", mirror, "s3://bucket/corpora/ravdess/") \
        == "s3://bucket/corpora/ravdess/Actor_01/a.wav"
    assert recorded_path("/data/emodb/wav/b.wav", "/data/emodb", None) == "/data/emodb/wav/b.wav"
    assert recorded_path("/elsewhere/c.wav", mirror, "s3://bucket/corpora/ravdess") == "/elsewhere/c.wav"


def test_audio_load_reads_s3_uris_through_the_storage_layer(tmp_path, monkeypatch) -> None:
    import hashlib

    import numpy as np
    import soundfile as sf

    from affectflow import audio
    from affectflow.storage import s3

    clip = tmp_path / "a.wav"
    sf.write(clip, np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.3, 16000)
    objects = {"s3://bucket/corpora/a.wav": clip.read_bytes()}

    def read_bytes(uri: str) -> bytes:
        if uri not in objects:
            raise s3.S3NotFoundError(f"{uri}: no such object")
        return objects[uri]

    monkeypatch.setattr(s3, "read_bytes", read_bytes)
    sha = hashlib.sha256(clip.read_bytes()).hexdigest()
    x = audio.load("s3://bucket/corpora/a.wav", 8000, expect_sha256=sha)
    assert x.shape == (8000,)
    assert audio.load("s3://bucket/corpora/a.wav", 16000).shape == (16000,)
    with pytest.raises(audio.AudioError, match=r"s3://bucket/corpora/b.wav: file not found"):
        audio.load("s3://bucket/corpora/b.wav", 16000, expect_sha256=sha)
