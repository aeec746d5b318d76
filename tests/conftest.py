"""Shared fixtures: generated corpora for unit tests, ../shared/data for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from base_settings import synth_params_at

os.environ.setdefault("AFFECTFLOW_PROGRESS", "0")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AFFECTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (RAVDESS, EmoDB); integration tests skip with a reason when absent."""
    if not (SHARED_DATA / "ravdess").is_dir() or not (SHARED_DATA / "emodb").is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (set AFFECTFLOW_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated RAVDESS-layout corpus: 8 actors x 4 emotions x 4 clips of 1.2 s (session-wide, read-only)."""
    from affectflow.corpora.demo import make_ravdess_like

    root = tmp_path_factory.mktemp("synth") / "ravdess"
    make_ravdess_like(root, actors=8, emotions=("neutral", "happy", "sad", "angry"),
                      clips_per_emotion=4, duration=1.2)
    return root


@pytest.fixture
def synth_params(synth_root: Path, tmp_path: Path):
    """Params for the generated corpus: 4 classes, workdir in tmp_path, tiny and fast settings."""
    return synth_params_at(synth_root, tmp_path)


@pytest.fixture(autouse=True)
def _isolate_mlflow_uri(monkeypatch: pytest.MonkeyPatch):
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: restore it so no test sees another's store."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    yield
    for key in keys:
        os.environ.pop(key, None)
        if saved[key] is not None:
            os.environ[key] = saved[key]


@pytest.fixture(autouse=True)
def _own_checkpoint_root(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Each test its own training checkpoint root, as each pipeline pod gets the chart's: runs with
    the same configuration in two tests would otherwise resume each other (the run name keys them)."""
    monkeypatch.setenv("AFFECTFLOW_RAY_STORAGE", str(tmp_path_factory.mktemp("checkpoints")))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def one_torch_thread():
    """Small nets on a shared CPU run fastest (and most predictably) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
