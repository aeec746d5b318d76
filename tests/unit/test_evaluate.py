"""Evaluation: metrics.json (with CIs), breakdowns, plots, cross-corpus, and leakage refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from base_settings import base_params
from recognizer_support import trained

from affectflow.contracts.evaluation import read_evaluation
from affectflow.contracts.feature_store import INDEX
from affectflow.contracts.manifest import manifest_hash, read_manifest, write_manifest
from affectflow.stages.evaluate import EvaluationError, evaluate


def test_metrics_json_report_and_plots(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    m = t["metrics"]
    out = t["base"] / "evaluate"
    assert m == read_evaluation(out).to_json() and m["format"] == 2
    assert not set(m) & {"uar", "wa", "macro_f1", "per_class_recall", "test_manifest_hash"}  # each score once
    for name in ("uar", "wa", "macro_f1"):
        assert m["test"][f"{name}_ci_low"] <= m["test"][name] <= m["test"][f"{name}_ci_high"]
    df = read_manifest(t["manifest"])
    test = df[df["split"] == "test"]
    assert m["test"]["n"] == len(test)
    assert set(m["test"]["per_speaker"]) == set(test["speaker"])
    assert set(m["test"]["per_gender"]) == set(test["gender"])
    assert sum(v["n"] for v in m["test"]["per_gender"].values()) == len(test)
    assert np.asarray(m["test"]["confusion"]).sum() == len(test)
    assert set(m["test"]["per_class_recall"]) == {"neutral", "happy", "sad", "angry"}
    assert m["test"]["test_manifest_hash"] == manifest_hash(test)
    assert (out / "confusion.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "**UAR**" in report and "Per speaker" in report
    pred = pd.read_parquet(out / "predictions.parquet")
    assert len(pred) == len(test) and np.allclose(pred.filter(like="p_").sum(axis=1), 1.0, atol=1e-5)


def _with_other_corpus(t: dict, tmp_path: Path) -> tuple[Path, Path]:
    """The manifest plus a second corpus 'other' (3 of the 4 classes) and a features folder for it."""
    df = read_manifest(t["manifest"])
    other = df[df["emotion"].isin(["happy", "sad", "angry"])].copy()
    other["utt_id"] = "other/" + other["utt_id"].str.split("/").str[-1]
    other["corpus"] = "other"
    other["speaker"] = "other/" + other["speaker"].str.split("/").str[-1]
    write_manifest(pd.concat([df, other], ignore_index=True), tmp_path / "m.parquet")
    feats = tmp_path / "features"
    feats.mkdir()
    for kind in ("logmel", "egemaps"):
        os.symlink(Path(t["features"]) / kind, feats / kind)
    index = pd.read_parquet(Path(t["features"]) / INDEX)
    extra = index[index["utt_id"].isin(set(other["utt_id"].str.replace("other/", "ravdess/")))].copy()
    extra["utt_id"] = "other/" + extra["utt_id"].str.split("/").str[-1]
    pd.concat([index, extra], ignore_index=True).to_parquet(feats / INDEX, index=False)
    return tmp_path / "m.parquet", feats


def test_cross_corpus_predictions_range_over_every_evaluation_class(
        synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    """A corpus lacking a class is scored with predictions over the whole evaluation class set: a
    prediction of the missing class is an error, not dropped (the old scoring inflated UAR)."""
    t = trained(synth_root, tmp_path_factory)
    manifest, feats = _with_other_corpus(t, tmp_path)
    params = t["params"].model_copy(update={"evaluate": t["params"].evaluate.model_copy(
        update={"cross_corpus": ["other"], "bootstrap": 0})})
    m = evaluate(params, t["result"].model_dir, manifest, feats, tmp_path / "eval").to_json()
    x = m["cross_corpus"]["other"]
    n_other = int((read_manifest(manifest)["corpus"] == "other").sum())
    assert x["classes"] == x["predicted_over"] == ["neutral", "happy", "sad", "angry"]
    assert x["classes_present"] == ["happy", "sad", "angry"] and x["chance_uar"] == 0.25
    assert x["n"] == n_other and x["rows"] == "all clips"
    cm = np.asarray(x["confusion"])
    assert cm.shape == (4, 4) and cm[0].sum() == 0  # no neutral reference clips ...
    pred = pd.read_parquet(tmp_path / "eval" / "predictions.parquet").query("set == 'cross:other'")
    assert set(pred["predicted"]) <= {"neutral", "happy", "sad", "angry"}
    recalls = [np.mean(pred.loc[pred["emotion"] == c, "predicted"] == c) for c in ("happy", "sad", "angry")]
    assert x["uar"] == pytest.approx(np.mean(recalls), abs=1e-4)  # ... and neutral predictions count as errors
    assert sum(x["prediction_histogram"].values()) == n_other
    assert set(x["collapse"]) == {"collapsed", "reasons", "prediction_share"}
    assert (tmp_path / "eval" / "confusion_other.png").is_file()
    assert "Cross-corpus: other" in (tmp_path / "eval" / "report.md").read_text()
    assert m["test"]["n"] == t["metrics"]["test"]["n"]  # the main test set is unchanged by the extra corpus

    for bad, msg in ((["ravdess"], "is a training corpus"), (["nope"], "no row has that 'corpus'")):
        p = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"cross_corpus": bad})})
        with pytest.raises(EvaluationError, match=msg):
            evaluate(p, t["result"].model_dir, manifest, feats, tmp_path / "bad")


def test_a_heldout_corpus_is_scored_on_all_its_clips_without_being_named(
        synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    t = trained(synth_root, tmp_path_factory)
    manifest, feats = _with_other_corpus(t, tmp_path)
    df = read_manifest(manifest)
    df.loc[df["corpus"] == "other", ["role", "split"]] = ["heldout", "test"]
    write_manifest(df, manifest)
    # its own MLflow store: these evaluations must not overwrite the shared trained model's test_uar
    params = t["params"].model_copy(update={
        "evaluate": t["params"].evaluate.model_copy(update={"bootstrap": 0}),
        "tracking": t["params"].tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'own.db'}"})})
    m = evaluate(params, t["result"].model_dir, manifest, feats, tmp_path / "eval").to_json()
    assert m["cross_corpus"]["other"]["n"] == int((df["corpus"] == "other").sum())
    assert m["cross_corpus_mean_uar"] == m["cross_corpus"]["other"]["uar"]
    # no source test speakers (leave-corpus-out training): the held-out clips are the test set
    df.loc[(df["corpus"] == "ravdess") & (df["split"] == "test"), "split"] = "val"
    write_manifest(df, tmp_path / "loco.parquet")
    m = evaluate(params, t["result"].model_dir, tmp_path / "loco.parquet", feats, tmp_path / "eval2").to_json()
    assert m["test"]["scope"].startswith("held-out corpora other")
    assert m["test"]["uar"] == m["cross_corpus"]["other"]["uar"]
    assert m["test"]["test_manifest_hash"] == manifest_hash(df[df["corpus"] == "other"])


def test_scoring_a_subset_that_lacks_a_class_and_the_collapse_flags():
    from affectflow.stages.evaluate import score

    params = base_params({"evaluate.bootstrap": 0})
    classes = ["neutral", "happy", "sad", "angry"]
    y_true = np.array([1, 1, 2, 2, 3, 3])  # no neutral reference
    y_pred = np.array([0, 1, 2, 2, 3, 0])  # two neutral predictions: wrong, not ignored
    s = score(y_true, y_pred, classes, params)
    assert s["uar"] == pytest.approx((0.5 + 1.0 + 0.5) / 3, abs=1e-4)
    assert s["per_class_recall"]["neutral"] is None and s["chance_uar"] == 0.25
    assert s["classes_present"] == ["happy", "sad", "angry"]
    assert s["prediction_histogram"] == {"neutral": 2, "happy": 1, "sad": 2, "angry": 1}
    assert not s["collapse"]["collapsed"]
    collapsed = score(y_true, np.array([3, 3, 3, 3, 3, 2]), classes, params)["collapse"]
    assert collapsed["collapsed"] and collapsed["prediction_share"]["angry"] == pytest.approx(5 / 6, abs=1e-3)
    assert any("'angry' takes 83%" in r for r in collapsed["reasons"])
    assert any("recall of 'happy' is 0%" in r for r in collapsed["reasons"])
    low = score(np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), np.array([0, 0] + [1] * 9 + [0]), ["a", "b"],
                params)["collapse"]
    assert low["collapsed"]  # 'b' takes 9/12 > 50 %


def test_refuses_a_manifest_whose_test_speakers_were_trained_on(synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    t = trained(synth_root, tmp_path_factory)
    df = read_manifest(t["manifest"])
    df["split"] = df["split"].map({"train": "test", "test": "train", "val": "val"})
    write_manifest(df, tmp_path / "swapped.parquet")
    with pytest.raises(EvaluationError, match="were training speakers"):
        evaluate(t["params"], t["result"].model_dir, tmp_path / "swapped.parquet", t["features"], tmp_path / "e")


def test_the_evaluation_names_the_model_it_scored(synth_root: Path, tmp_path_factory: pytest.TempPathFactory,
                                                  tmp_path: Path) -> None:
    """metrics.json carries the model's identity (the registry binds evaluations to models with it);
    a re-score (log_to_model_run=False) leaves the training run's own evaluation alone."""
    from mlflow import MlflowClient

    from affectflow.contracts.model_folder import content_hash, read_model_meta

    t = trained(synth_root, tmp_path_factory)
    model = t["result"].model_dir
    run_id = read_model_meta(model).mlflow["run_id"]
    assert t["metrics"]["model"] == {"content_hash": content_hash(model), "mlflow_run_id": run_id,
                                     "dir": str(model), "arch": read_model_meta(model).arch}
    client = MlflowClient(t["params"].tracking.uri)
    before = len(client.get_metric_history(run_id, "test_uar"))
    again = evaluate(t["params"], model, t["manifest"], t["features"], tmp_path / "again", log_to_model_run=False)
    assert again.to_json()["model"] == t["metrics"]["model"] and again.test.uar == t["metrics"]["test"]["uar"]
    assert len(client.get_metric_history(run_id, "test_uar")) == before
