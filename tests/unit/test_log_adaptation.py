"""Adaptation from the prediction log: `pretrain.target_log` makes the logged clips one more
unlabelled DANN target, and `pretrain.select: dev` decides without target labels whether to adapt
and with which λ (deep embedded validation, `affectflow.models.dev`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_pretrain import _params, world  # noqa: F401 (fixture)

from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.models.dev import bootstrap_wins, choose, confident, dev_risk, importance_weights
from affectflow.serving.prediction_log import PredictionLog
from affectflow.stages.pretrain.log_target import LOG_CORPUS, LogTargetError, with_log_target
from affectflow.stages.pretrain.stage import pretrain


def test_dev_risk_is_the_mean_loss_under_uniform_weights_and_follows_the_weights() -> None:
    losses = np.array([0.2, 0.4, 1.0, 2.0])
    assert dev_risk(losses, np.ones(4)) == pytest.approx(losses.mean())
    # the target looks like the last two clips: their (higher) losses dominate the estimate
    assert dev_risk(losses, np.array([0.1, 0.1, 1.9, 1.9])) > losses.mean()


def test_importance_weights_favour_target_like_source_clips() -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + np.array([2.0, 0.0])
    w = importance_weights(src, tgt, np.array([[-1.0, 0.0], [1.5, 0.0]]))
    assert w[1] > 5 * w[0]


def test_choose_declines_adaptation_unless_it_lowers_the_risk() -> None:
    assert not choose({0.0: 1.0, 0.3: 1.05, 1.0: 1.2}).adapt
    picked = choose({0.0: 1.0, 0.3: 0.8, 1.0: 0.9})
    assert picked.adapt and picked.lambd == 0.3
    assert not choose({0.0: 1.0, 0.3: 0.95}, margin=0.1).adapt  # not by more than the margin
    with pytest.raises(ValueError, match="lambda 0"):
        choose({0.3: 1.0})


def _terms(gain_by_speaker: list[float], clips: int = 30, seed: int = 0) -> tuple[dict, np.ndarray]:
    """DEV terms of no adaptation and one DANN (λ 0.3) over validation speakers; the DANN's loss on
    speaker k is no adaptation's minus `gain_by_speaker[k]`; uniform weights."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"s{k}" for k in range(len(gain_by_speaker))], clips)
    base = rng.uniform(0.5, 1.5, len(groups))
    adapted = base - np.repeat(gain_by_speaker, clips)
    w = np.ones(len(groups))
    return {0.0: (base, w), 0.3: (adapted, w)}, groups


def test_confident_keeps_an_adaptation_every_speaker_agrees_on() -> None:
    terms, groups = _terms([0.1] * 8)
    assert bootstrap_wins(terms, 0.3, groups) == 1.0
    c = confident(terms, groups, confidence=0.95)
    assert c.adapt and c.lambd == 0.3 and c.confidence == 1.0


def test_confident_declines_a_gain_that_one_speaker_carries() -> None:
    # the point estimate prefers the DANN (mean gain +0.03), but it comes from one speaker of eight:
    # resampling the speakers, the DANN is worse about half the time
    terms, groups = _terms([0.6, -0.06, -0.06, -0.06, -0.06, -0.06, -0.06, -0.06])
    assert choose({k: dev_risk(*t) for k, t in terms.items()}).adapt
    c = confident(terms, groups, confidence=0.95)
    assert not c.adapt and c.lambd == 0.0 and c.confidence is not None and c.confidence < 0.95
    assert "speaker-bootstrap" in c.reason
    assert confident(terms, groups, confidence=0.0).adapt  # 0: the point estimate alone


def _log_from_store(w: dict[str, Any], where: Path, corpus: str = "mycorpus", key: str | None = None) -> int:
    """A prediction log of what a served model saw: the target corpus's training clips (raw eGeMAPS
    stand-ins), as the pyfunc records them (a vector's moments: the vector itself)."""
    fs = FeatureSet(w["features"])
    df = w["df"]
    rows = df[(df["corpus"] == corpus) & (df["split"] == "train")]
    arrays = fs.load("egemaps", rows["utt_id"].tolist())
    store_key = key or str(fs.index.loc[fs.index["kind"] == "egemaps", "key"].iloc[0])
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    plog = PredictionLog(where, flush_records=10_000)
    plog.append([{"time": now, "source": "pyfunc", "model": "m", "feature_key": store_key, "item": f"row {i}",
                  "status": "ok", "duration_s": 1.2, "windows": 1, "classes": ["a"], "probabilities": [1.0],
                  "summary": [0.0], "moment_frames": 1.0, "moment_mean": a.astype(float).tolist(),
                  "moment_m2": [0.0] * len(a)} for i, a in enumerate(arrays)], flush=True)
    return len(arrays)


def _with_val(w: dict[str, Any], tmp_path: Path) -> Path:
    """The world's manifest with two source speakers as validation speakers (DEV scores on them)."""
    df = read_manifest(w["manifest"])
    src = sorted(df.loc[df["corpus"] == "ravdess", "speaker"].unique())
    df.loc[df["speaker"].isin(src[:2]) & (df["split"] == "train"), "split"] = "val"
    write_manifest(df, tmp_path / "manifest.parquet")
    return tmp_path / "manifest.parquet"


def test_the_log_becomes_a_target_corpus_in_a_derived_store(world, tmp_path) -> None:  # noqa: F811
    n = _log_from_store(world, tmp_path / "log")
    p = _params(world, **{"pretrain.target_log": str(tmp_path / "log")})
    df, store, _ = with_log_target(p, read_manifest(world["manifest"]), world["features"], tmp_path / "lt")
    added = df[df["corpus"] == LOG_CORPUS]
    assert len(added) == n and set(added["role"]) == {"target"} and set(added["split"]) == {"train", "val"}
    fs = FeatureSet(store)
    assert np.allclose(fs.matrix("egemaps", added["utt_id"].tolist()),
                       FeatureSet(world["features"]).matrix("egemaps", world["df"][(world["df"]["corpus"] == "mycorpus")
                                                                               & (world["df"]["split"] == "train")]
                                                             ["utt_id"].tolist()))
    some = world["df"][world["df"]["corpus"] == "ravdess"]["utt_id"].tolist()[:3]
    assert np.allclose(fs.matrix("egemaps", some), FeatureSet(world["features"]).matrix("egemaps", some))  # by path


def test_a_log_of_other_features_or_without_audio_for_frame_features_is_refused(world, tmp_path) -> None:  # noqa: F811
    _log_from_store(world, tmp_path / "log", key="another-configuration")
    p = _params(world, **{"pretrain.target_log": str(tmp_path / "log")})
    with pytest.raises(LogTargetError, match="field 'feature_key'"):
        with_log_target(p, read_manifest(world["manifest"]), world["features"], tmp_path / "lt")
    fs = FeatureSet(world["features"])
    _log_from_store(world, tmp_path / "log2", key=str(fs.index.loc[fs.index["kind"] == "logmel", "key"].iloc[0]))
    mel = _params(world, **{"pretrain.target_log": str(tmp_path / "log2"), "train.model": "cnn_bigru"})
    with pytest.raises(LogTargetError, match="field 'audio'"):
        with_log_target(mel, read_manifest(world["manifest"]), world["features"], tmp_path / "lt2")


def test_pretrain_adapts_to_the_log_and_dev_decides(world, tmp_path) -> None:  # noqa: F811
    _log_from_store(world, tmp_path / "log")
    p = _params(world, **{"pretrain.target_log": str(tmp_path / "log"), "pretrain.select": "dev",
                          "pretrain.select_lambdas": [0.3]})
    res = pretrain(p, _with_val(world, tmp_path), world["features"], tmp_path / "pretrain")
    report = json.loads(res.report_json.read_text())
    assert LOG_CORPUS in report["domains"]["targets"] and report["data"]["target_train"][LOG_CORPUS]["clips"] > 0
    sel = report["selection"]
    assert sel["method"] == "dev" and set(sel["risks"]) == {"0.0", "0.3", "1.0"}
    best = float(min(sel["risks"].items(), key=lambda kv: kv[1])[0])
    assert (sel["adapt"] and sel["lambd"] == best) or (not sel["adapt"] and sel["lambd"] == 0.0)
    # a DANN better by the point estimate is kept only when the speaker bootstrap agrees
    assert not sel["adapt"] or sel["confidence"] >= p.pretrain.select_confidence
    assert res.encoder_dir.is_dir()


def test_a_recognizer_without_encoder_parameters_cannot_be_adapted() -> None:
    """ssl_linear (one fixed layer + a closed-form head): the gradient reversal would move nothing."""
    from types import SimpleNamespace

    from affectflow.config import load_params
    from affectflow.stages.pretrain.data import PretrainDataError
    from affectflow.stages.pretrain.stage import build_dann

    def inp(model: str) -> SimpleNamespace:
        p = load_params("params.yaml", {"train.model": model, "train.ssl_linear.layer": 0,
                                        "features.ssl.layers": [3], "features.ssl.checkpoint": "pkg:whisper-base"})
        return SimpleNamespace(params=p, kind="ssl", input_dim=16, classes=["a", "b"],
                               domains=SimpleNamespace(names=["x", "y"]), speakers=[])

    with pytest.raises(PretrainDataError, match=r"train\.model ssl_linear: its encoder has no parameters"):
        build_dann(inp("ssl_linear"), 0)  # type: ignore[arg-type]
    assert any(True for _ in build_dann(inp("ssl_head"), 0).encoder.parameters())  # type: ignore[arg-type]
