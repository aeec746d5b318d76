"""Where tensors run: one device setting (`auto | cpu | cuda`) and one autocast rule for every stage.

`auto` takes a CUDA device when torch sees one and the CPU otherwise; `cuda` without a GPU is an
error naming the setting (a job that asked for a GPU must not silently crawl on CPU). Mixed
precision is bf16 autocast on CUDA only: CPU runs stay float32, which is both faster there and
bit-for-bit reproducible.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

DeviceSetting = Literal["auto", "cpu", "cuda"]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(setting: str, key: str = "device") -> Any:
    """A torch.device for `setting`; `key` names the params field in the error."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if setting == "cuda" and not cuda_available():
        raise RuntimeError(f"{key}: 'cuda' requested but torch sees no CUDA device (set it to auto or cpu)")
    if setting not in ("cpu", "cuda"):
        raise ValueError(f"{key}: expected auto, cpu or cuda, got {setting!r}")
    return torch.device(setting)


def autocast(device: Any, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere."""
    import torch

    if enabled and getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def no_autocast(device: Any) -> contextlib.AbstractContextManager[Any]:
    """Float32 inside an autocast region (e.g. a gradient penalty)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


def synchronize(device: Any) -> None:
    """Wait for queued GPU work, so timings measure compute and not just the launch."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)
