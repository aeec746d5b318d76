"""Ingest on the real corpora in ../shared/data (RAVDESS, EmoDB): counts, speaker-independent
splits, bad-file handling on a copy, and a 44.1 kHz CSV corpus through ingest -> validate -> features."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
from base_settings import base_params

from affectflow.contracts.manifest import read_manifest
from affectflow.contracts.splits import check_no_leakage
from affectflow.corpora import emodb
from affectflow.stages.ingest import IngestError, ingest

pytestmark = pytest.mark.integration

RAVDESS_CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
EMODB_COUNTS = {"angry": 127, "happy": 71, "neutral": 79, "sad": 62}


def params_for(tmp: Path, data_root: Path, corpora: list[dict], **overrides):
    return base_params({
        "paths.workdir": str(tmp / "work"), "paths.data_root": str(data_root),
        "ingest.corpora": corpora, "ingest.workers": 2, "features.workers": 1, **overrides,
    })


@pytest.fixture(scope="module")
def both(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """One ingest of RAVDESS (source) + EmoDB (target), as the cross-corpus experiments use them."""
    tmp = tmp_path_factory.mktemp("ingest_shared")
    p = params_for(tmp, shared_data, [
        {"name": "ravdess", "adapter": "ravdess", "root": "ravdess", "role": "source"},
        {"name": "emodb", "adapter": "emodb", "root": "emodb", "role": "target"},
    ], **{"ingest.classes": RAVDESS_CLASSES})
    res = ingest(p)
    assert res.summary["quarantined"] == 0 and res.summary["dropped_labels"] == {}
    return read_manifest(res.manifest)


def test_ravdess_1440_clips_24_speakers_8_classes(both):
    rav = both[both["corpus"] == "ravdess"]
    assert len(rav) == 1440 and rav["speaker"].nunique() == 24
    assert rav["emotion"].value_counts().to_dict() == {e: 96 if e == "neutral" else 192 for e in RAVDESS_CLASSES}
    assert set(rav["sample_rate"]) == {16000} and set(rav["channels"]) == {1}
    assert rav["duration"].between(2.5, 6.0).all()
    # This copy holds one byte-identical pair (03-01-03-01-02-0{1,2}-07: actor 07's two repetitions);
    # duplicates are tolerated only within one speaker, where they cannot leak across splits.
    dup = rav[rav["sha256"].duplicated(keep=False)]
    assert len(dup) <= 2 and (dup.groupby("sha256")["speaker"].nunique() == 1).all()
    spk = rav.drop_duplicates("speaker")
    assert spk["gender"].value_counts().to_dict() == {"female": 12, "male": 12}
    # 4 folds of 6 actors, 3 women and 3 men each.
    per_fold = spk.groupby(["fold", "gender"]).size().unstack()
    assert per_fold.shape == (4, 2) and (per_fold == 3).all().all()


def test_emodb_339_clips_10_speakers_4_classes(both):
    emo = both[both["corpus"] == "emodb"]
    assert len(emo) == 339 and emo["speaker"].nunique() == 10
    assert emo["emotion"].value_counts().to_dict() == EMODB_COUNTS
    assert set(emo["role"]) == {"target"}
    assert emo.drop_duplicates("speaker")["gender"].value_counts().to_dict() == {"female": 5, "male": 5}


@pytest.mark.parametrize("corpus", ["ravdess", "emodb"])
def test_no_split_of_either_corpus_shares_a_speaker(both, corpus):
    df = both[both["corpus"] == corpus]
    check_no_leakage(df)
    spk = {s: set(df.loc[df["split"] == s, "speaker"]) for s in ("train", "val", "test")}
    assert all(spk.values()), {s: len(v) for s, v in spk.items()}  # each corpus has its own test and val
    assert not (spk["train"] & spk["val"]) and not (spk["train"] & spk["test"]) and not (spk["val"] & spk["test"])
    assert set(df.loc[df["split"] == "test", "fold"]) == {0}


@pytest.fixture
def emodb_copy(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """20 EmoDB files (2 per speaker) copied to tmp, one of them truncated; returns (folder, bad file)."""
    files = sorted((shared_data / "emodb").rglob("*.wav"))
    by_speaker: dict[str, list[Path]] = {}
    for f in files:
        by_speaker.setdefault(f.name[:2], []).append(f)
    picked = [f for spk in sorted(by_speaker) for f in by_speaker[spk][:2]]
    assert len(picked) == 20
    dst = tmp_path / "emodb_copy"
    for f in picked:
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst / f.parent.name / f.name)
    bad = dst / picked[5].parent.name / picked[5].name
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])  # an interrupted copy: header intact, tail missing
    return dst, bad


def test_truncated_emodb_file_fails_with_its_name(emodb_copy, tmp_path):
    folder, bad = emodb_copy
    p = params_for(tmp_path, folder.parent, [{"name": "emodb", "adapter": "emodb", "root": folder.name}],
                   **{"ingest.classes": list(EMODB_COUNTS), "ingest.on_bad_audio": "fail"})
    with pytest.raises(IngestError, match="truncated") as err:
        ingest(p)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "work" / "ingest" / "manifest.parquet").exists()


def test_truncated_emodb_file_is_quarantined_and_the_rest_ingested(emodb_copy, tmp_path):
    folder, bad = emodb_copy
    p = params_for(tmp_path, folder.parent, [{"name": "emodb", "adapter": "emodb", "root": folder.name}],
                   **{"ingest.classes": list(EMODB_COUNTS), "ingest.on_bad_audio": "skip", "splits.n_folds": 2})
    res = ingest(p)
    q = pd.read_csv(res.manifest.parent / "quarantine.csv")
    assert q["path"].tolist() == [str(bad)] and "truncated" in q["reason"].iloc[0]
    assert q["utt_id"].tolist() == [f"emodb/{bad.stem}"]
    df = read_manifest(res.manifest)
    assert len(df) == 19 and str(bad) not in set(df["path"])
    assert res.summary["quarantined"] == 1 and df["speaker"].nunique() == 10


def test_csv_corpus_at_44k_through_ingest_validate_and_features(shared_data, tmp_path):
    """10 EmoDB clips (angry and sad of 5 speakers) resampled to 44.1 kHz, described by a CSV."""
    folder = tmp_path / "emodb44k"
    (folder / "wav").mkdir(parents=True)
    rows = []
    for spk in ("03", "08", "09", "10", "11"):
        for cls, letter in (("Angry", "W"), ("Sad", "T")):
            src = next(f for f in sorted((shared_data / "emodb" / cls).glob(f"{spk}*.wav")) if f.stem[5] == letter)
            x, sr = sf.read(src, dtype="float32")
            sf.write(folder / "wav" / src.name, soxr.resample(x, sr, 44100, quality="HQ"), 44100, subtype="PCM_16")
            gender = emodb.parse_name(src).gender
            rows.append((f"wav/{src.name}", spk, cls, gender[0].upper()))  # "Angry", "F": normalised
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "emotion", "gender"])
        w.writerows(rows)
    p = params_for(tmp_path, tmp_path, [{"name": "emo44", "adapter": "csv", "root": "emodb44k/labels.csv"}],
                   **{"ingest.classes": ["angry", "sad"], "features.kinds": ["logmel"]})

    res = ingest(p)
    df = read_manifest(res.manifest)
    assert len(df) == 10 and set(df["sample_rate"]) == {44100} and set(df["channels"]) == {1}
    assert df["emotion"].value_counts().to_dict() == {"angry": 5, "sad": 5}
    assert df.drop_duplicates("speaker")["gender"].value_counts().to_dict() == {"male": 3, "female": 2}
    assert set(df["split"]) == {"train", "val", "test"}

    validation = pytest.importorskip("affectflow.stages.validate")
    gate = validation.validate(p, res.manifest, tmp_path / "work" / "validation")
    assert gate.passed, gate.summary["failures"]

    extract = pytest.importorskip("affectflow.stages.features")
    feats = extract.extract_features(p, res.manifest, tmp_path / "work" / "features")
    from affectflow.contracts.feature_store import FeatureSet

    arrays = FeatureSet(tmp_path / "work" / "features").load("logmel", df["utt_id"].tolist())
    hop = p.features.logmel.hop_length
    for arr, dur in zip(arrays, df["duration"], strict=True):
        # Frames follow the 16 kHz (resampled) signal, not the 44.1 kHz file.
        assert arr.shape[0] == p.features.logmel.n_mels
        assert abs(arr.shape[1] - dur * p.audio.sample_rate / hop) <= 3
        assert np.isfinite(arr).all()
    assert feats.summary["clips"] == 10
