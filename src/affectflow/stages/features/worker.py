"""The worker side of the features stage: a process decodes a chunk of clips once and computes
the openSMILE kinds (and log-mel, when it runs in the workers) on it."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from typing import Any

import numpy as np

from affectflow import audio
from affectflow.features import egemaps as eg
from affectflow.features.keys import LOGMEL
from affectflow.features.robustness import copy_kind, recording_copy, split_kind

# ----------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}

_Job = tuple[str, str, bool, tuple[str, ...], str]
# sha256, path, want log-mel, openSMILE kinds to compute (recording-condition copies included), corpus
_Done = tuple[str, str, "np.ndarray | None", int, dict[str, np.ndarray], "str | None"]
# sha256, path, waveform (only when the main process computes log-mel), samples, arrays by kind, error


def _init_worker(sample_rate: int, egemaps_cfg: Any, smile_kinds: list[str], logmel_cfg: Any,
                 torch_threads: int, device: str = "cpu", robustness: Any = None) -> None:
    """Per-process state: one reusable openSMILE extractor, and maybe a LogMel (worker processes:
    on CPU; inline, i.e. one worker: in this process, on the chosen device)."""
    bases = sorted({split_kind(k)[0] for k in smile_kinds})
    _WORKER.update(sample_rate=sample_rate, logmel=None, robustness=robustness,
                   smile=eg.Egemaps(egemaps_cfg, bases) if bases else None,
                   seconds={"decode": 0.0, "egemaps": 0.0, "logmel": 0.0})
    if logmel_cfg is not None:
        import torch

        from affectflow.features.logmel import LogMel

        torch.set_num_threads(torch_threads)
        _WORKER["logmel"] = LogMel(logmel_cfg, sample_rate, device)


def _work_chunk(jobs: list[_Job]) -> tuple[list[_Done], dict[str, float]]:
    """Decode a chunk of similar-length clips once each; openSMILE them; log-mel them as one batch
    here (CPU mode) or hand the waveforms back (CUDA mode). Arrays go back to the process that
    writes the shard. Stops at the first bad clip."""
    sr = _WORKER["sample_rate"]
    secs = dict.fromkeys(_WORKER["seconds"], 0.0)
    done: list[_Done] = []
    to_mel: list[tuple[int, np.ndarray]] = []
    for sha, path, want_logmel, smile_kinds, corpus in jobs:
        t0 = time.perf_counter()
        try:
            x = audio.load(path, sr, expect_sha256=sha)  # the bytes must still be the manifest's
        except audio.AudioError as e:
            done.append((sha, path, None, 0, {}, e.reason))
            return done, secs
        t1 = time.perf_counter()
        secs["decode"] += t1 - t0
        arrays: dict[str, np.ndarray] = {}
        if smile_kinds:
            try:
                arrays.update(_smile_with_copies(x, sr, smile_kinds, corpus, sha))
            except Exception as e:  # openSMILE raises plain RuntimeErrors from its C layer
                done.append((sha, path, None, x.size, {}, f"openSMILE failed ({e})"))
                return done, secs
            secs["egemaps"] += time.perf_counter() - t1
        local = want_logmel and _WORKER["logmel"] is not None
        if local:
            to_mel.append((len(done), x))
        done.append((sha, path, x if want_logmel and not local else None, x.size, arrays, None))
    if to_mel:
        t0 = time.perf_counter()
        mels = _WORKER["logmel"].batch([x for _, x in to_mel])
        for (i, _), m in zip(to_mel, mels, strict=True):
            done[i][4][LOGMEL] = m
        secs["logmel"] += time.perf_counter() - t0
    return done, secs


def _smile_with_copies(x: np.ndarray, sr: int, kinds: tuple[str, ...], corpus: str, sha: str) -> dict[str, np.ndarray]:
    """openSMILE kinds of the clean clip and of its recording-condition copies (`kind@r<k>`)."""
    by_copy: dict[int, list[str]] = {}
    for kind in kinds:
        base, k = split_kind(kind)
        by_copy.setdefault(k, []).append(base)
    out: dict[str, np.ndarray] = {}
    for k, bases in sorted(by_copy.items()):
        wave = x if k == 0 else recording_copy(x, sr, _WORKER["robustness"], corpus, k, sha)
        for base, arr in _WORKER["smile"](wave, sr, bases).items():
            out[copy_kind(base, k) if k else base] = arr
    return out


def _mp_context() -> Any:
    """fork where it exists: workers start in milliseconds and inherit imports; they never touch
    torch or CUDA (the pool is started before the main process puts anything on a GPU)."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
