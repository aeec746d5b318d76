"""The pretrain stage end to end on generated audio: a RAVDESS-layout source corpus and a target
corpus given only as a CSV manifest (another "microphone": a low-pass channel and lower level).

Checks: the encoder folder is a recognizer model folder that `train.train` fine-tunes, the report
and plots, the target test speakers' features are never read (they are absent from the store),
domain labels and adaptation counts in the report, and the log-mel CNN encoder through the stage.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from base_settings import base_params
from recognizer_support import tiny_params, write_features

from affectflow.config import Params
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.model_folder import load_weights as load_state
from affectflow.contracts.model_folder import read_model_meta as read_meta
from affectflow.serving.recognizer import load_model_dir
from affectflow.stages.pretrain.data import PretrainDataError
from affectflow.stages.pretrain.stage import pretrain

EMOTIONS = ("neutral", "happy", "sad", "angry")
TARGET_SPEAKERS = range(40, 46)
CLIPS = 2
TINY_DANN = {"pretrain.epochs": 3, "pretrain.batch_size": 16, "pretrain.threads": 1,
             "pretrain.domain_hidden": [16], "pretrain.probe_folds": 2, "pretrain.probe_max_iter": 200}


def _make_csv_corpus(folder: Path) -> Path:
    """Generated clips through a different channel, described by a CSV (relative paths)."""
    from affectflow.corpora.demo import utterance

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for spk in TARGET_SPEAKERS:
        for k, emo in enumerate(EMOTIONS):
            for i in range(CLIPS):
                x = utterance(emo, spk, seed=spk * 100 + k * 10 + i, duration=1.2)
                x = (0.6 * np.convolve(x, [0.5, 0.3, 0.2], mode="same")).astype(np.float32)
                name = f"clips/s{spk}_{emo}_{i}.wav"
                (folder / "clips").mkdir(exist_ok=True)
                sf.write(folder / name, x, 16000, subtype="PCM_16")
                rows.append({"path": name, "speaker": f"spk{spk}", "emotion": emo.capitalize(),
                             "gender": "female" if spk % 2 == 0 else "male"})
    path = folder / "corpus.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "speaker", "emotion", "gender"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def world(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ingested source + CSV target; features for every clip except the target's test speakers."""
    from affectflow.stages.ingest import ingest

    base = tmp_path_factory.mktemp("pretrain")
    target_csv = _make_csv_corpus(base / "mycorpus")
    params = base_params({
        "paths.workdir": str(base / "work"), "paths.data_root": str(synth_root.parent),
        "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"},
                           {"name": "mycorpus", "adapter": "csv", "root": str(target_csv), "role": "target"}],
        "ingest.classes": list(EMOTIONS), "ingest.workers": 1, "features.workers": 1,
        "tracking.uri": f"sqlite:///{base / 'mlflow.db'}", "tracking.artifact_location": str(base / "mlartifacts"),
    })
    manifest = ingest(params, base / "ingest").manifest
    df = read_manifest(manifest)
    hidden = df[(df["corpus"] == "mycorpus") & (df["split"] == "test")]
    assert len(hidden) and len(df[(df["corpus"] == "mycorpus") & (df["split"] == "train")])
    # The store lacks the target test clips: reading any of them would raise KeyError.
    visible = df.drop(hidden.index)
    features = write_features(params, visible, base / "features")
    return {"params": params, "manifest": manifest, "features": features, "df": df, "hidden": hidden, "base": base}


def _params(world: dict[str, Any], **extra: Any) -> Params:
    return tiny_params(world["params"], **{"train.model": "egemaps_mlp", **TINY_DANN, **extra})


@pytest.fixture(scope="module")
def stage(world: dict[str, Any]) -> dict[str, Any]:
    p = _params(world)
    res = pretrain(p, world["manifest"], world["features"], world["base"] / "pretrain")
    return {"params": p, "result": res}


def test_encoder_folder_is_a_recognizer_model_folder(world: dict[str, Any], stage: dict[str, Any]):
    res = stage["result"]
    assert res.encoder_dir == world["base"] / "pretrain" / "encoder"
    meta = read_meta(res.encoder_dir)
    assert meta.arch == "egemaps_mlp" and meta.feature == "egemaps"
    assert meta.classes == list(EMOTIONS)
    assert meta.train.corpora == ["ravdess"]
    assert meta.pretrain.domains == ["ravdess", "mycorpus"]
    assert meta.normalization["mode"] == "global" and len(meta.normalization["mean"]) == meta.input_dim
    hidden = set(world["hidden"]["speaker"])
    assert meta.pretrain.adaptation_speakers and not set(meta.pretrain.adaptation_speakers) & hidden
    df = world["df"]
    train_spk = set(df.loc[(df["corpus"] == "mycorpus") & (df["split"] == "train"), "speaker"])
    assert set(meta.pretrain.adaptation_speakers) == train_spk
    rec = load_model_dir(res.encoder_dir)  # the emotion head is a working recognizer too
    assert not rec.model.training and rec.model.head.out_features == len(EMOTIONS)


def test_report_probe_projection_and_mlflow(world: dict[str, Any], stage: dict[str, Any]):
    res = stage["result"]
    report = json.loads(res.report_json.read_text())
    df = world["df"]
    n_target_train = int(((df["corpus"] == "mycorpus") & (df["split"] == "train")).sum())
    assert report["data"]["target_train"]["mycorpus"]["clips"] == n_target_train
    assert report["data"]["target_test_speakers"] == world["hidden"]["speaker"].nunique()
    assert report["domains"]["labels"] == ["ravdess", "mycorpus"]
    assert set(report["probe"]) == {"input features", "source-only encoder", "DANN encoder"}
    for rows in report["probe"].values():
        (p,) = rows
        assert p["target"] == "mycorpus" and 0 <= p["accuracy"] <= 1
        assert p["a_distance"] == pytest.approx(2 * (1 - 2 * (1 - p["accuracy"])), abs=2e-3)
    hist = report["history"]["DANN"]
    assert len(hist) == stage["params"].pretrain.epochs and "loss_domain" in hist[0]
    assert "loss_domain" not in report["history"]["source-only"][0]
    for png in ("projection.png", "curves.png"):
        assert (res.out_dir / png).stat().st_size > 0
    md = res.report_md.read_text()
    assert "proxy A-distance" in md and "![projection](projection.png)" in md
    from mlflow.tracking import MlflowClient

    from affectflow.tracking.uri import resolve_uri

    run = MlflowClient(resolve_uri(stage["params"].tracking.uri)).get_run(res.mlflow_run_id)
    assert run.data.tags["stage"] == "pretrain"
    assert "dann_loss_domain" in run.data.metrics and "a_distance_DANN encoder_mycorpus" in run.data.metrics


def test_recognizer_fine_tunes_the_pretrained_encoder(world: dict[str, Any], stage: dict[str, Any], tmp_path: Path):
    from affectflow.stages.train.stage import train

    p = tiny_params(stage["params"], **{"train.epochs": 1, "train.lr": 1e-9, "train.schedule": "constant",
                                        "train.specaugment.noise_std": 0.0})
    pre = load_state(stage["result"].encoder_dir)
    tuned = load_state(train(p, world["manifest"], world["features"], tmp_path / "train",
                             pretrained=stage["result"].encoder_dir).model_dir)
    enc = [k for k in pre if k.startswith("encoder.") and pre[k].is_floating_point() and "running" not in k]
    assert enc and all(torch.allclose(pre[k], tuned[k], atol=1e-5) for k in enc)


def test_target_test_rows_marked_train_are_refused(world: dict[str, Any], tmp_path: Path):
    """A manifest whose target split was edited so a test speaker also has 'train' rows is refused."""
    df = world["df"].copy()
    spk = world["hidden"]["speaker"].iloc[0]
    first = df.index[df["speaker"] == spk][0]
    df.loc[first, "split"] = "train"
    write_manifest(df, tmp_path / "m.parquet")
    from affectflow.stages.pretrain.data import TargetLeakageError

    with pytest.raises(TargetLeakageError, match=spk):
        pretrain(_params(world), tmp_path / "m.parquet", world["features"], tmp_path / "out")


def test_no_target_is_an_error_that_names_the_field(world: dict[str, Any], tmp_path: Path):
    df = world["df"].copy()
    df["role"] = "source"
    write_manifest(df, tmp_path / "m.parquet")
    with pytest.raises(PretrainDataError, match="role: target"):
        pretrain(_params(world), tmp_path / "m.parquet", world["features"], tmp_path / "out")


def test_log_mel_cnn_encoder_through_the_stage(world: dict[str, Any], tmp_path: Path):
    p = _params(world, **{"train.model": "cnn_bigru", "pretrain.epochs": 1, "pretrain.compare_source_only": False,
                          "pretrain.normalize": "corpus", "pretrain.speaker_adversarial": True})
    res = pretrain(p, world["manifest"], world["features"], tmp_path / "pre")
    meta = read_meta(res.encoder_dir)
    assert meta.arch == "cnn_bigru" and meta.feature == "logmel"
    assert set(meta.pretrain.normalization["per_corpus"]) == {"ravdess", "mycorpus"}
    report = json.loads(res.report_json.read_text())
    assert set(report["probe"]) == {"input features", "DANN encoder"}
    assert "loss_speaker" in report["history"]["DANN"][0]
    assert load_model_dir(res.encoder_dir).model.encoder.dim == 2 * p.train.cnn.gru_hidden


def test_per_corpus_normalisation_travels_to_the_fine_tuned_recognizer(world: dict[str, Any], tmp_path: Path):
    """pretrain.normalize: corpus — the encoder learnt on each corpus standardised by its own
    statistics, so the recognizer trained from it, `evaluate` and serving must see inputs that way."""
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.models.data import compute_stats
    from affectflow.serving.recognizer import predict_features
    from affectflow.stages.train.stage import train

    p = _params(world, **{"pretrain.normalize": "corpus", "pretrain.compare_source_only": False})
    res = pretrain(p, world["manifest"], world["features"], tmp_path / "pretrain")
    enc = read_meta(res.encoder_dir)
    assert set(enc.normalization_per_corpus) == {"ravdess", "mycorpus"} and enc.deploy_corpus == "mycorpus"
    df = world["df"]
    fs = FeatureSet(world["features"])
    adapt = df[(df["corpus"] == "mycorpus") & (df["split"] == "train")]
    want = compute_stats(fs.load("egemaps", adapt["utt_id"].tolist()), "global")
    assert np.allclose(enc.normalization_per_corpus["mycorpus"]["mean"], want.mean, rtol=1e-5)

    tuned = train(tiny_params(p, **{"train.epochs": 1}), world["manifest"], world["features"], tmp_path / "train",
                  pretrained=res.encoder_dir)
    rec = load_model_dir(tuned.model_dir)
    assert rec.meta.deploy_corpus == "mycorpus"
    assert rec.stats_for("mycorpus").mean == rec.stats_for(None).mean == enc.normalization_per_corpus["mycorpus"]["mean"]
    assert rec.stats_for("ravdess").mean == enc.normalization_per_corpus["ravdess"]["mean"]
    assert rec.stats_for("ravdess").mean != rec.stats_for("mycorpus").mean
    rows = adapt.head(6)
    arrays = fs.load("egemaps", rows["utt_id"].tolist())
    as_target = predict_features(rec, arrays, corpora=["mycorpus"] * len(rows))
    assert np.allclose(predict_features(rec, arrays), as_target)  # unknown audio: the adaptation target
    assert not np.allclose(predict_features(rec, arrays, corpora=["ravdess"] * len(rows)), as_target)
