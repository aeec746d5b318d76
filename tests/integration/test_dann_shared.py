"""DANN on the real corpora: RAVDESS (source, its adapter) -> EmoDB given only as a CSV manifest
(target), log-mel CNN encoder, through pretrain -> evaluate (cross-corpus) -> train (fine-tune).

Eight RAVDESS actors keep it to a few minutes on a CPU. The target's test speakers' features are
left out of the store, so the stage would fail if it read them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from base_settings import base_params

from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.model_folder import read_model_meta as read_meta
from affectflow.corpora import emodb
from affectflow.stages.evaluate import evaluate
from affectflow.stages.features import extract_features
from affectflow.stages.ingest import ingest
from affectflow.stages.pretrain.stage import pretrain
from affectflow.stages.train.stage import train

pytestmark = pytest.mark.integration

CLASSES = ["angry", "happy", "neutral", "sad"]
RAVDESS_ACTORS = 8


def _emodb_csv(shared: Path, out: Path) -> Path:
    """EmoDB as a plain CSV manifest (absolute paths), made with the adapter's own parsing."""
    rows = [{"path": u.path, "speaker": u.speaker, "emotion": u.label, "gender": u.gender}
            for u in emodb.prepare(str(shared / "emodb"))]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "speaker", "emotion", "gender"])
        w.writeheader()
        w.writerows(rows)
    return out


def test_ravdess_to_emodb_csv_through_pretrain_evaluate_and_fine_tuning(shared_data: Path, tmp_path: Path):
    target_csv = _emodb_csv(shared_data, tmp_path / "emodb_csv" / "emodb.csv")
    params = base_params({
        "paths.workdir": str(tmp_path / "work"), "paths.data_root": str(shared_data),
        "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess", "role": "source"},
                           {"name": "emodb", "adapter": "csv", "root": str(target_csv), "role": "target"}],
        "ingest.classes": CLASSES, "ingest.workers": 2, "features.kinds": ["logmel"], "features.workers": 1,
        "train.model": "cnn_bigru", "train.cnn.channels": [8, 16, 16], "train.cnn.gru_hidden": 16,
        "train.cnn.attention_hidden": 16, "train.crop_frames": 128, "train.epochs": 1, "train.threads": 1,
        "pretrain.epochs": 2, "pretrain.threads": 1, "pretrain.domain_hidden": [32],
        "evaluate.bootstrap": 100, "evaluate.cross_corpus": ["emodb"],
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.artifact_location": str(tmp_path / "mla"),
    })
    df = read_manifest(ingest(params, tmp_path / "ingest").manifest)
    assert "ravdess/calm" not in set(df["label"]) and set(df["emotion"]) == set(CLASSES)  # calm dropped
    actors = sorted(df.loc[df["corpus"] == "ravdess", "speaker"].unique())[:RAVDESS_ACTORS]
    df = df[(df["corpus"] == "emodb") | df["speaker"].isin(actors)]
    write_manifest(df, tmp_path / "manifest.parquet")
    emodb_test = df[(df["corpus"] == "emodb") & (df["split"] == "test")]
    visible = df.drop(emodb_test.index)
    write_manifest(visible, tmp_path / "visible.parquet")
    features = tmp_path / "features"
    extract_features(params, tmp_path / "visible.parquet", features)

    res = pretrain(params, tmp_path / "manifest.parquet", features, tmp_path / "pretrain")
    report = json.loads(res.report_json.read_text())
    emodb_train = df[(df["corpus"] == "emodb") & (df["split"] == "train")]
    assert report["data"]["target_train"]["emodb"]["clips"] == len(emodb_train)
    meta = read_meta(res.encoder_dir)
    assert set(meta.pretrain.adaptation_speakers) == set(emodb_train["speaker"])
    assert not set(meta.pretrain.adaptation_speakers) & set(emodb_test["speaker"])
    assert {p["target"] for rows in report["probe"].values() for p in rows} == {"emodb"}

    # The cross-corpus test set needs the target test features now (evaluation, not adaptation).
    extract_features(params, tmp_path / "manifest.parquet", features)
    m = evaluate(params, res.encoder_dir, tmp_path / "manifest.parquet", features, tmp_path / "evaluate")
    assert m.cross_corpus["emodb"].n == len(emodb_test) and m.cross_corpus["emodb"].rows == "test split (DANN target)"

    tr = train(params, tmp_path / "manifest.parquet", features, tmp_path / "train", pretrained=res.encoder_dir)
    assert read_meta(tr.model_dir).lineage["pretrained"] == str(res.encoder_dir)
