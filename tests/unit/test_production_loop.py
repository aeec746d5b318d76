"""The production loop end to end (issue 28, "Must show"): serve a model -> traffic from a corpus it
never saw -> the log fills (with the audio) -> the monitor flags drift, and not on held-out speakers
of its training corpus -> retraining adapts on the logged audio (DANN, λ chosen by DEV) -> the
generalization guard decides on per-corpus scores -> promote or refuse.

Generated audio (tests/unit/test_pretrain.py's world: a RAVDESS-layout training corpus and a corpus
through another channel, `mycorpus`), a tiny log-mel CNN: what is checked is the wiring of the loop,
not accuracy (benchmarks/loop_study.py has the real-corpora figures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from base_settings import base_params
from test_monitor import _mic
from test_predict import make_model_dir
from test_prediction_log import _pyfunc
from test_pretrain import _params, world  # noqa: F401 (fixture)

from affectflow import audio
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.model_folder import write_model_folder
from affectflow.metrics import confusion, uar_cm
from affectflow.serving.monitor import RETRAIN_EXIT, run
from affectflow.serving.prediction_log import read_log
from affectflow.serving.recognizer import load_model_dir, predict_features
from affectflow.stages.pretrain.stage import pretrain
from affectflow.tracking.guard import generalization_guard


def _serve(model: Path, log: Path, paths: list[str], channel: bool = False) -> None:
    """Send the clips to the served pyfunc (`channel`: through another microphone, `test_monitor._mic`)."""
    py = _pyfunc(model, log, keep_audio=True)
    waves = [_mic(audio.load(p, 16000), k) if channel else audio.load(p, 16000) for k, p in enumerate(paths)]
    for i in range(0, len(waves), 8):
        chunk = waves[i:i + 8]
        py.predict(None, pd.DataFrame({"audio": [w.tolist() for w in chunk], "sample_rate": [16000] * len(chunk)}))
    py.rec.recorder.log.flush()


def _per_corpus_uar(model_dir: Path, df: pd.DataFrame, fs: FeatureSet) -> dict[str, float]:
    rec = load_model_dir(model_dir)
    out = {}
    for corpus, rows in df.groupby("corpus"):
        probs = predict_features(rec, fs.load("logmel", rows["utt_id"].tolist()), corpora=rows["corpus"].tolist())
        y = rows["emotion"].map({c: i for i, c in enumerate(rec.classes)}).to_numpy()
        out[str(corpus)] = float(uar_cm(confusion(y, probs.argmax(1), len(rec.classes))))
    return out


def test_serve_log_monitor_adapt_and_guard(world, tmp_path) -> None:  # noqa: F811
    df = world["df"]
    fs = FeatureSet(world["features"])
    key = str(fs.index.loc[fs.index["kind"] == "logmel", "key"].iloc[0])
    rec = load_model_dir(make_model_dir(tmp_path / "m", seed=3))
    rec.meta.feature_key = key  # served model reads the store's log-mel configuration
    served = write_model_folder(tmp_path / "served", rec.model, rec.meta)

    # serve traffic from the corpus the model never saw, recorded through a tinny microphone; the log
    # fills, audio kept
    unseen = df[(df["corpus"] == "mycorpus") & (df["split"] != "test")]
    _serve(served, tmp_path / "log", unseen["path"].tolist(), channel=True)
    logged = read_log(tmp_path / "log")
    assert len(logged) == len(unseen) and logged["audio"].notna().all()

    # the monitor flags it; held-out (test) speakers of the training corpus are not flagged
    params = base_params({"paths.workdir": str(tmp_path / "w"), "monitor.min_clips": 20, "monitor.collapse_share": 1.0})
    inputs = {"model": str(served), "features": world["features"], "manifest": world["manifest"]}
    flagged = run(params, {**inputs, "log": str(tmp_path / "log")}, tmp_path / "monitor")
    assert flagged.summary["drift"] and flagged.exit_code == RETRAIN_EXIT, flagged.summary["reason"]
    same = df[(df["corpus"] == "ravdess") & (df["split"] == "test")]
    _serve(served, tmp_path / "same", same["path"].tolist())
    quiet = run(params, {**inputs, "log": str(tmp_path / "same")}, tmp_path / "monitor-same")
    assert quiet.summary["status"] == "judged" and not quiet.summary["drift"], quiet.summary

    # retraining adapts on the logged audio, DEV choosing whether and how strongly
    m = read_manifest(world["manifest"])
    src = sorted(m.loc[m["corpus"] == "ravdess", "speaker"].unique())
    m.loc[m["speaker"].isin(src[:1]) & (m["split"] == "train"), "split"] = "val"
    m = m[m["corpus"] != "mycorpus"]  # the unseen corpus reaches retraining only through the log
    write_manifest(m, tmp_path / "manifest.parquet")
    p = _params(world, **{"train.model": "cnn_bigru", "pretrain.target_log": str(tmp_path / "log"),
                          "pretrain.select": "dev", "pretrain.select_lambdas": [0.3]})
    res = pretrain(p, tmp_path / "manifest.parquet", world["features"], tmp_path / "pretrain")
    report = json.loads(res.report_json.read_text())
    assert "deployment" in report["domains"]["targets"] and report["selection"]["method"] == "dev"
    assert report["data"]["target_train"]["deployment"]["clips"] == int(np.ceil(len(unseen) * 4 / 5))

    # the guard compares champion (served) and challenger (adapted) per corpus, and decides
    scored = df[(df["split"] == "test") & (df["corpus"] == "ravdess")]
    champion = _per_corpus_uar(served, scored, fs)
    challenger = _per_corpus_uar(res.encoder_dir, scored, fs)
    decision = generalization_guard(challenger, champion, ["ravdess"], margin=0.05)
    lost = challenger["ravdess"] < champion["ravdess"] - 0.05
    assert decision.passed == (not lost) and decision.rows[0].champion_uar == champion["ravdess"]
    assert ("refused" if lost else "passed") in decision.markdown()
