"""metrics.json's contract (affectflow.contracts.evaluation): one writer, one reader, every score
once; the earlier layout still read; a newer writer's optional section kept; bad files named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectflow.contracts.evaluation import (
    Evaluation,
    EvaluationError,
    EvaluationMismatch,
    check_evaluation,
    read_evaluation,
    write_evaluation,
)

TEST = {"n": 4, "uar": 0.5, "uar_ci_low": 0.3, "uar_ci_high": 0.7, "wa": 0.6, "macro_f1": 0.55,
        "per_class_recall": {"a": 0.5, "b": None}, "test_manifest_hash": "t", "classes": ["a", "b"],
        "confusion": [[1, 1], [0, 0]], "collapse": {"collapsed": False, "reasons": [], "prediction_share": {}}}
MODEL = {"content_hash": "c" * 64, "mlflow_run_id": "r1", "dir": "/m", "arch": "egemaps_mlp"}


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_round_trip_and_each_score_once(tmp_path: Path) -> None:
    ev = Evaluation.model_validate({"model": MODEL, "corpora": ["ravdess"], "test": TEST})
    path = write_evaluation(tmp_path / "metrics.json", ev)
    data = json.loads(path.read_text())
    assert data["format"] == 2 and set(data) == {"format", "model", "corpora", "test", "cross_corpus"}
    back = read_evaluation(tmp_path)  # the folder or the file
    assert back == ev and back.test.recalls() == {"a": 0.5}


def test_the_earlier_layout_is_read_without_its_copies(tmp_path: Path) -> None:
    legacy = {"model_dir": "/m", "arch": "egemaps_mlp", "model": {"content_hash": "c" * 64, "mlflow_run_id": "r1"},
              "corpora": ["ravdess"], "uar": 0.5, "wa": 0.6, "macro_f1": 0.55, "per_class_recall": TEST["per_class_recall"],
              "collapsed": False, "test_manifest_hash": "t", "test": TEST}
    ev = read_evaluation(_write(tmp_path / "metrics.json", legacy))
    assert ev.test.uar == 0.5 and ev.model.dir == "/m" and ev.model.arch == "egemaps_mlp"
    assert ev.extra_sections() == {}
    with pytest.raises(EvaluationError, match=r"metrics\.json: field 'uar' \(0\.9\) differs from 'test\.uar'"):
        read_evaluation(_write(tmp_path / "metrics.json", {**legacy, "uar": 0.9}))


def test_a_newer_writers_section_is_kept_and_a_stray_field_is_an_error(tmp_path: Path) -> None:
    newer = {"fairness": {"gap": 0.41}, "by_age": {"uar": 0.2}}
    ev = read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": TEST, "fairness": newer}))
    assert ev.extra_sections() == {"fairness": newer}
    assert write_evaluation(tmp_path / "again.json", ev) and json.loads((tmp_path / "again.json").read_text())[
        "fairness"] == newer  # written back unchanged
    with pytest.raises(EvaluationError, match=r"m\.json: field 'uar_typo': is not known"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": TEST, "uar_typo": 0.5}))
    with pytest.raises(EvaluationError, match=r"m\.json: field 'test\.uar_typo': is not known"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": {**TEST, "uar_typo": 1}}))
    with pytest.raises(EvaluationError, match=r"m\.json: field 'test\.uar': .*number"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": {**TEST, "uar": "high"}}))
    with pytest.raises(EvaluationError, match=r"m\.json: field 'test\.test_manifest_hash': Field required"):
        bad = {k: v for k, v in TEST.items() if k != "test_manifest_hash"}
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": bad}))
    with pytest.raises(EvaluationMismatch, match=r"m\.json: field 'model' missing"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "test": TEST}))
    with pytest.raises(EvaluationError, match=r"m\.json: not valid JSON"):
        (tmp_path / "m.json").write_text("{")
        read_evaluation(tmp_path / "m.json")


DIMENSIONS = {"names": ["arousal", "valence"], "weak_labels": True, "model_weak_labels": True,
              "label_sources": {"ravdess": {"arousal": "weak", "valence": "weak"}}, "ci_level": 0.95,
              "sets": {"test": {"arousal": {"n": 40, "ccc": 0.61, "ccc_ci_low": 0.5, "ccc_ci_high": 0.7,
                                            "per_corpus": {"ravdess": {"n": 40, "ccc": 0.61, "ccc_ci_low": 0.5,
                                                                       "ccc_ci_high": 0.7}}},
                                "valence": {"n": 40}}}}


def test_the_dimensions_section_is_typed_and_round_trips(tmp_path: Path) -> None:
    ev = read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": TEST,
                                                      "dimensions": DIMENSIONS}))
    assert ev.extra_sections() == {} and ev.dimensions is not None and ev.dimensions.weak_labels is True
    assert ev.dimensions.test_ccc() == {"arousal": 0.61}  # valence: no CCC (null), not a made-up number
    assert ev.dimensions.sets["test"]["arousal"].per_corpus["ravdess"].n == 40
    write_evaluation(tmp_path / "again.json", ev)
    assert read_evaluation(tmp_path / "again.json") == ev
    assert json.loads((tmp_path / "again.json").read_text())["dimensions"]["sets"]["test"]["valence"] == {
        "n": 40, "per_corpus": {}}
    assert read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": TEST})).dimensions is None
    bad = {**DIMENSIONS, "sets": {"test": {"arousal": {"n": 40, "ccc": "high"}}}}
    with pytest.raises(EvaluationError, match=r"m\.json: field 'dimensions\.sets\.test\.arousal\.ccc': .*number"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": TEST, "dimensions": bad}))
    with pytest.raises(EvaluationError, match=r"m\.json: field 'dimensions\.weak_labels': Field required"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": TEST,
                                                     "dimensions": {k: v for k, v in DIMENSIONS.items()
                                                                    if k != "weak_labels"}}))


def test_an_evaluation_is_bound_to_its_model(tmp_path: Path) -> None:
    from affectflow.contracts.model_folder import content_hash

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({
        "arch": "egemaps_mlp", "classes": ["a", "b"], "feature": "egemaps", "feature_config": {},
        "audio": {"sample_rate": 16000}, "normalization": {}, "arch_config": {}, "input_dim": 88,
        "mlflow": {"run_id": "r1"}}))
    (model / "model.pt").write_bytes(b"w")
    ev = Evaluation.model_validate({"model": {**MODEL, "content_hash": content_hash(model)}, "test": TEST})
    assert check_evaluation(ev, "metrics.json", model).content_hash == content_hash(model)
    other = ev.model_copy(update={"model": ev.model.model_copy(update={"mlflow_run_id": "r2"})})
    with pytest.raises(EvaluationMismatch, match=r"metrics\.json is an evaluation of model .* \(MLflow run r2\)"):
        check_evaluation(other, "metrics.json", model)


def test_a_breakdown_group_has_the_sets_headline_fields_and_no_sections(tmp_path: Path) -> None:
    from affectflow.contracts.evaluation import GroupScores, Headline, SetScores

    assert set(Headline.model_fields) == set(GroupScores.model_fields) < set(SetScores.model_fields)
    group = {"n": 2, "uar": 0.5, "wa": 0.5, "macro_f1": 0.4}
    ev = read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL,
                                                      "test": {**TEST, "per_speaker": {"s1": group}}}))
    assert ev.test.per_speaker["s1"].uar == 0.5
    with pytest.raises(EvaluationError, match=r"m\.json: field 'test\.per_speaker\.s1\.notes': Extra inputs"):
        read_evaluation(_write(tmp_path / "m.json", {"format": 2, "model": MODEL, "test": {
            **TEST, "per_speaker": {"s1": {**group, "notes": {"a": 1}}}}}))  # a section: only on a set
