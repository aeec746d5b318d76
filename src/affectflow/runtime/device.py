"""Where tensors run: one device setting (`auto | cpu | cuda`) and one autocast rule for every stage.

`auto` takes a CUDA device when torch sees one and the CPU otherwise; `cuda` without a GPU is an
error naming the setting (a job that asked for a GPU must not silently crawl on CPU). A node that
has a GPU torch cannot use (a driver too old for the wheel's CUDA, a CPU build of torch) is named:
`cuda` fails with the reason, `auto` logs it and runs on the CPU, and `device_tags()` carries it
into every MLflow run (`tracking.runs.start_run`), so the slow run says why. Mixed
precision is bf16 autocast on CUDA only: CPU runs stay float32, which is both faster there and
bit-for-bit reproducible.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Literal

DeviceSetting = Literal["auto", "cpu", "cuda"]
GPU_UNUSABLE_TAG = "affectflow.gpu_unusable"
"""MLflow tag: why this node's GPU was not used (absent when there is no GPU or torch can use it)."""
NVIDIA_PROC = Path("/proc/driver/nvidia/version")
NVIDIA_DEVICES = "/dev/nvidia[0-9]*"

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def visible_gpus() -> int:
    """CUDA devices torch can use in this process (0 without a usable GPU)."""
    import torch

    return int(torch.cuda.device_count()) if cuda_available() else 0


def gpu_on_node() -> bool:
    """Whether the container sees an NVIDIA GPU (its device files or the driver), usable or not."""
    return bool(glob.glob(NVIDIA_DEVICES)) or NVIDIA_PROC.exists()


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version, from /proc (None without one)."""
    try:
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", NVIDIA_PROC.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


@functools.lru_cache(maxsize=1)
def gpu_unusable_reason() -> str | None:
    """Why a GPU this node has cannot run torch, or None (no GPU, or torch can use it)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = bool(torch.cuda.is_available())
    if usable or not gpu_on_node():
        return None
    if torch.version.cuda is None:
        return f"the node has a GPU but torch {torch.__version__} is a CPU build"
    said = "; ".join(dict.fromkeys(str(w.message).strip() for w in caught))
    return (f"the node has a GPU (driver {driver_version() or 'unknown'}) that torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}) cannot use" + (f": {said}" if said else ""))


def device_tags() -> dict[str, str]:
    """Tags for an MLflow run on this node: the reason its GPU is unused, when it has one it cannot use."""
    reason = gpu_unusable_reason()
    return {GPU_UNUSABLE_TAG: reason[:5000]} if reason else {}


def auto_uses_cuda(key: str = "device") -> bool:
    """`auto`'s choice; a GPU torch cannot use is logged (the task log) before falling back to the CPU."""
    if cuda_available():
        return True
    reason = gpu_unusable_reason()
    if reason:
        log.warning("%s: auto runs on the CPU because %s", key, reason)
    return False


def resolve_device(setting: str, key: str = "device") -> Any:
    """A torch.device for `setting`; `key` names the params field in the error."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if auto_uses_cuda(key) else "cpu")
    if setting == "cuda" and not cuda_available():
        reason = gpu_unusable_reason()
        if reason:
            raise RuntimeError(f"{key}: 'cuda' requested but {reason}")
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


@contextlib.contextmanager
def torch_threads(n: int) -> Any:
    """torch's intra-op threads set to `n` inside the block (0: left as they are), restored after:
    small matrix products on a shared CPU run fastest on one thread, and spin-waiting threads cost
    many times the CPU (benchmarks/RESULTS.md, "The default decision")."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
