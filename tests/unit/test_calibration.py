"""Calibrated confidence: temperature scaling lowers ECE on an over-confident model, the model
folder stores it, scoring applies it, evaluate reports ECE before / after with reliability PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from recognizer_support import trained

from affectflow.contracts.model_folder import ModelFolderError, parse_meta, read_model_meta
from affectflow.models.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    rescale,
    scaled_probabilities,
)


def _overconfident(n: int, seed: int, sharpness: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 4-class model that is right ~60 % of the time but claims ~100 %: clean logits
    (the true class +1.2 over unit Gaussian noise) multiplied by `sharpness`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.normal(0, 1, (n, 4))
    z[np.arange(n), y] += 1.2
    return sharpness * z, y


def test_temperature_scaling_lowers_ece_of_an_overconfident_model_on_new_clips():
    fit_z, fit_y = _overconfident(800, seed=0)
    test_z, test_y = _overconfident(2000, seed=1)
    t = fit_temperature(fit_z, fit_y)
    assert t > 3  # the constructed model is sharpened 8x: the fit must undo most of it
    before = expected_calibration_error(scaled_probabilities(test_z), test_y)
    after = expected_calibration_error(scaled_probabilities(test_z, t), test_y)
    assert before > 0.25 and after < 0.06 and after < before / 4
    assert nll(test_z, test_y, t) < nll(test_z, test_y)
    same = scaled_probabilities(test_z, t).argmax(1) == scaled_probabilities(test_z).argmax(1)
    assert same.all()  # calibration never changes a prediction


def test_a_calibrated_model_is_left_near_one():
    z, y = _overconfident(3000, seed=2, sharpness=1.0)
    assert 0.8 < fit_temperature(z, y) < 1.25


def test_rescale_from_probabilities_equals_scaling_the_logits():
    z, _ = _overconfident(50, seed=3)
    direct = scaled_probabilities(z, 2.5)
    assert np.allclose(rescale(scaled_probabilities(z), 2.5), direct, atol=1e-5)
    sub = scaled_probabilities(z)[:, :3]  # a class subset, renormalised (evaluate's class set)
    sub = sub / sub.sum(1, keepdims=True)
    assert np.allclose(rescale(sub, 2.5), scaled_probabilities(z[:, :3], 2.5), atol=1e-5)


def test_ece_is_zero_when_confidence_matches_accuracy_and_bins_count_every_clip():
    probs = np.tile([0.75, 0.25], (400, 1))
    y = np.r_[np.zeros(300, int), np.ones(100, int)]
    r = reliability(probs, y)
    assert r.count.sum() == 400 and r.ece == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(probs, 1 - y) == pytest.approx(0.5)


def test_fit_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="do not match"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, int))


def _meta(**calibration) -> dict:
    return {"arch": "mlp", "classes": ["a", "b"], "feature": "egemaps", "feature_config": {}, "audio": {"sample_rate": 16000},
            "normalization": {}, "arch_config": {}, "input_dim": 88,
            **({"calibration": calibration} if calibration else {})}


def test_model_json_calibration_field_is_typed():
    meta = parse_meta(_meta(temperature=1.7, fitted_on="validation speakers of x", n=40, ece_before=0.3, ece_after=0.05),
                      "m/model.json")
    assert meta.calibration is not None and meta.calibration.temperature == 1.7
    assert "calibration" not in parse_meta(_meta(), "m/model.json").to_json()  # older folders hash the same
    with pytest.raises(ModelFolderError, match=r"m/model.json: field 'calibration.temperature'"):
        parse_meta(_meta(temperature=0.0, fitted_on="x", n=4, ece_before=0.1, ece_after=0.1), "m/model.json")


def test_training_fits_the_temperature_and_scoring_applies_it(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.serving.recognizer import load_model_dir, predict_features

    t = trained(synth_root, tmp_path_factory)
    meta = read_model_meta(t["result"].model_dir)
    cal = meta.calibration
    assert cal is not None and cal.fitted_on.startswith("validation speakers")
    assert cal.n == meta.train.n_val and cal.temperature > 0
    assert cal.ece_after <= cal.ece_before + 1e-6  # in-sample: the NLL fit cannot make it much worse
    rec = load_model_dir(t["result"].model_dir)
    arrays = FeatureSet(t["features"]).load(rec.feature, [str(u) for u in _some_ids(t)])
    raw = predict_features(rec, arrays, calibrated=False)
    assert np.allclose(predict_features(rec, arrays), rescale(raw, cal.temperature), atol=1e-5)


def _some_ids(t: dict) -> list[str]:
    from affectflow.contracts.manifest import read_manifest

    return read_manifest(t["manifest"])["utt_id"].head(6).tolist()


def test_evaluate_reports_ece_before_and_after_with_a_reliability_diagram(synth_root: Path,
                                                                        tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    out = t["base"] / "evaluate"
    c = json.loads((out / "metrics.json").read_text())["test"]["calibration"]
    assert c["temperature"] == pytest.approx(read_model_meta(t["result"].model_dir).calibration.temperature, abs=1e-4)
    assert 0 <= c["ece_after"] <= 1 and 0 <= c["ece_before"] <= 1
    assert (out / "reliability.png").stat().st_size > 0
    assert "expected calibration error" in (out / "report.md").read_text()
