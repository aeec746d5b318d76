"""The device setting on a node whose GPU torch cannot use (e.g. a driver too old for the wheel's CUDA):
`cuda` fails naming the reason, `auto` says so in the task log and in the MLflow run's tags."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from affectflow.config import load_params
from affectflow.runtime import device
from affectflow.tracking import runs

DRIVER_TOO_OLD = "The NVIDIA driver on your system is too old (found version 12040)."


@pytest.fixture
def old_driver_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A node with a GPU and a driver torch refuses (what torch.cuda.is_available() warns there)."""
    proc = tmp_path / "nvidia_version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")

    def refuse() -> bool:
        warnings.warn(DRIVER_TOO_OLD, UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", refuse)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device, "NVIDIA_PROC", proc)
    device.gpu_unusable_reason.cache_clear()
    yield
    device.gpu_unusable_reason.cache_clear()


def test_cuda_fails_loudly_with_the_drivers_reason(old_driver_node: None) -> None:
    with pytest.raises(RuntimeError, match=r"train.device: 'cuda' requested but the node has a GPU \(driver "
                                           r"550.54.15\) that torch .* \(CUDA 13.0\) cannot use: .*too old"):
        device.resolve_device("cuda", "train.device")


def test_auto_falls_back_to_cpu_and_says_why(old_driver_node: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=device.__name__):
        assert device.resolve_device("auto", "features.device").type == "cpu"
    assert "features.device: auto runs on the CPU because the node has a GPU" in caplog.text
    assert DRIVER_TOO_OLD in caplog.text
    tags = device.device_tags()
    assert DRIVER_TOO_OLD in tags[device.GPU_UNUSABLE_TAG]


def test_the_unusable_gpu_is_tagged_on_the_mlflow_run(old_driver_node: None, tmp_path: Path) -> None:
    import mlflow

    params = load_params(None, {"tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                "tracking.artifact_location": str(tmp_path / "mlartifacts"),
                                "tracking.experiment": "device-test"})
    with runs.start_run(params, "device-check", tags={"stage": "train"}, log_params=False) as run:
        run_id = run.info.run_id
    tags = mlflow.get_run(run_id).data.tags
    assert tags["stage"] == "train" and "too old" in tags[device.GPU_UNUSABLE_TAG]


def test_no_gpu_on_the_node_is_no_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "NVIDIA_PROC", tmp_path / "absent")
    monkeypatch.setattr(device, "NVIDIA_DEVICES", str(tmp_path / "nvidia[0-9]*"))
    device.gpu_unusable_reason.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=device.__name__):
            assert device.resolve_device("auto").type == "cpu"
        assert not caplog.text and device.device_tags() == {}
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            device.resolve_device("cuda")
    finally:
        device.gpu_unusable_reason.cache_clear()
