"""The shared JSON-artifact reader (`affectflow.contracts.json_file`): metrics.json, model.json and the
register tail's result and plan files go through it, so each names the file and the field alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectflow.contracts.evaluation import EvaluationError, read_evaluation
from affectflow.contracts.json_file import parse_model, read_json_file
from affectflow.contracts.model_folder import META_FILE, ModelFolderError, read_model_meta
from affectflow.contracts.synthetic import SyntheticFormatError
from affectflow.stages.register.plan import PLAN_FILE, read_plan
from affectflow.stages.register.result import read_registration

META = {"arch": "mlp", "classes": ["a", "b"], "feature": "egemaps", "feature_config": {},
        "audio": {"sample_rate": 16000}, "normalization": {}, "arch_config": {}, "input_dim": 88}


def test_read_json_file_names_a_missing_file_and_bytes_that_are_not_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gone\.json: nothing here \(run x\)"):
        read_json_file(tmp_path / "gone.json", ValueError, "nothing here (run x)")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(SyntheticFormatError, match=r"bad\.json: not valid JSON"):  # the caller's own error class
        read_json_file(tmp_path / "bad.json", SyntheticFormatError, "-")
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json_file(tmp_path / "ok.json", ValueError, "-") == {"a": [1, 2]}


def test_metrics_json_and_model_json_read_through_it_with_their_own_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"metrics\.json: metrics file not found \(run `affectflow evaluate`\)"):
        read_evaluation(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{META_FILE}: not a model folder"):
        read_model_meta(tmp_path)
    (tmp_path / "metrics.json").write_text("[")
    (tmp_path / META_FILE).write_text("{")
    with pytest.raises(EvaluationError, match=r"metrics\.json: not valid JSON"):
        read_evaluation(tmp_path)
    with pytest.raises(ModelFolderError, match=rf"{META_FILE}: not valid JSON"):
        read_model_meta(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({**META, "input_dim": "many", "colour": "red"}))
    with pytest.raises(ModelFolderError, match=rf"{META_FILE}: field 'input_dim': .*integer.*; field 'colour'"):
        read_model_meta(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps(META))
    assert read_model_meta(tmp_path).input_dim == 88


def test_the_register_tails_files_name_themselves(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"result\.json: no registration \(run `affectflow register`\)"):
        read_registration(tmp_path)
    (tmp_path / "result.json").write_text("not json")
    with pytest.raises(ValueError, match=r"result\.json: not valid JSON"):
        read_registration(tmp_path)
    assert read_plan(tmp_path) is None  # a placeholder folder holds no plan
    (tmp_path / PLAN_FILE).write_text("{")
    with pytest.raises(ValueError, match=r"plan\.json: not valid JSON"):
        read_plan(tmp_path)


def test_parse_model_places_a_validators_unknown_field_in_its_path() -> None:
    from pydantic import BaseModel, model_validator

    from affectflow.contracts.json_file import UNKNOWN_FIELD

    class Inner(BaseModel):
        @model_validator(mode="before")
        @classmethod
        def _no_keys(cls, data: dict) -> dict:
            for key in data:
                raise ValueError(f"{UNKNOWN_FIELD}{key} is not known")
            return data

    class Outer(BaseModel):
        inner: Inner

    with pytest.raises(ValueError, match=r"^f\.json: field 'inner\.stray': is not known$"):
        parse_model(Outer, {"inner": {"stray": 1}}, "f.json", ValueError)
