"""The model card of a registered version: its sections from model.json + metrics.json, weak
classes, and register writing it, logging it with the model and setting the version description."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from recognizer_support import trained

from affectflow.contracts.evaluation import parse_evaluation
from affectflow.contracts.model_folder import read_model_meta
from affectflow.corpora import ADAPTERS
from affectflow.corpora.facts import FACTS
from affectflow.tracking.model_card import SECTIONS, model_card, weak_classes


def test_every_adapter_but_csv_has_its_language_and_speech_type():
    assert set(FACTS) == set(ADAPTERS) - {"csv"}


def test_the_card_has_every_section_in_order_with_the_measured_figures(synth_root: Path,
                                                                       tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    meta, m = read_model_meta(t["result"].model_dir), t["metrics"]
    card = model_card(meta, parse_evaluation(m, "metrics.json"), title="affectflow-ser v7")
    assert card.startswith("# Model card: affectflow-ser v7")
    heads = [line[3:] for line in card.splitlines() if line.startswith("## ")]
    assert heads == list(SECTIONS)
    assert "English (North American)" in card and "acted" in card  # ravdess: languages and limits
    assert f"Intervals: {round(m['test']['ci_level'] * 100)} % percentile bootstrap" in card
    assert f"| test | {m['test']['n']} | {m['test']['uar']:.3f} [{m['test']['uar_ci_low']:.3f}" in card
    for gender, g in m["test"]["per_gender"].items():  # per-gender rows carry their interval
        assert f"| {gender} | {g['n']} | {g['uar']:.3f} [{g['uar_ci_low']:.3f}, {g['uar_ci_high']:.3f}]" in card
    assert "| ravdess |" in card  # per-corpus row
    for c in meta.classes:
        assert f"| {c} | " in card
    assert f"T = {meta.calibration.temperature:.3f}" in card
    assert f"{m['test']['calibration']['ece_before']:.3f} | {m['test']['calibration']['ece_after']:.3f}" in card
    assert "SYNTHETIC demo audio" in card
    assert f"epoch {meta.train.best_epoch} of {meta.train.epochs_run} by validation UAR" in card


def test_an_uncalibrated_model_says_so(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    meta = read_model_meta(t["result"].model_dir).model_copy(update={"calibration": None})
    assert "Not calibrated" in model_card(meta, parse_evaluation(t["metrics"], "metrics.json"), title="x")


def test_weak_classes_are_those_well_below_the_uar_weakest_first():
    m = {"test": {"uar": 0.6, "chance_uar": 0.25,
                  "per_class_recall": {"neutral": 0.8, "happy": 0.45, "sad": 0.55, "angry": 0.2, "fear": None}}}
    assert weak_classes(m) == ["angry", "happy"]
    none = copy.deepcopy(m)
    none["test"]["per_class_recall"] = {"neutral": 0.6, "happy": 0.58}
    assert weak_classes(none) == []


def test_register_writes_logs_and_describes_the_version_with_its_card(synth_root: Path,
                                                                      tmp_path_factory: pytest.TempPathFactory,
                                                                      tmp_path: Path):
    import mlflow
    from register_support import register

    t = trained(synth_root, tmp_path_factory)
    params = t["params"].model_copy(update={"registry": t["params"].registry.model_copy(
        update={"model_name": "card-test"})})
    res = register(params, t["result"].model_dir, t["base"] / "evaluate" / "metrics.json", tmp_path / "register")
    card = Path(res["model_card"])
    assert res["model_card_missing"] is None and card == tmp_path / "register" / "model_card.md"
    assert card.read_text().startswith(f"# Model card: card-test v{res['version']}")
    client = mlflow.MlflowClient(params.tracking.uri, params.tracking.uri)
    assert client.get_model_version("card-test", res["version"]).description == card.read_text()
    logged = [f.path for f in client.list_artifacts(res["run_id"], "model_card")]
    assert logged == ["model_card/model_card.md"]
