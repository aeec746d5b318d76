"""Two Ray workers (DDP) on a local Ray: the early-stopping case that used to hang finishes, every rank
stops at the epoch the single-worker rule gives on rank 0's history, and the workers read the run's
inputs from the pack staged on the shared storage, as on a KubeRay cluster.

The hang: each rank decided early stopping on its own validation score (BatchNorm buffers differ
between ranks), one rank left the loop and the other waited in the next all-reduce forever. Now rank
0's decision is broadcast (`loop.agree`) and its buffers too (`loop.sync_buffers`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from recognizer_support import corpus, tiny_params

from affectflow.stages.train.loop import worker_batch_size
from affectflow.stages.train.plan import plan
from affectflow.stages.train.shared import RAY_ADDRESS_ENV, local_inputs, read_inputs
from affectflow.stages.train.stage import train

PATIENCE = 2
DDP_TIMEOUT_S = 240
"""Generous for 2 shared cores; a hang would sit at the collective timeout (30 min) instead."""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """A local Ray with 2 CPUs (one per worker) and no dashboard; its address."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def single_worker_rule(history: list[dict[str, Any]], patience: int) -> tuple[int, int, bool]:
    """(best epoch, epochs run, stopped early) that one worker's loop gives for these scores."""
    best, best_epoch, bad = -1.0, -1, 0
    for row in history:
        if row["val_uar"] > best:
            best, best_epoch, bad = row["val_uar"], row["epoch"], 0
        else:
            bad += 1
        if bad >= patience:
            return best_epoch, row["epoch"] + 1, True
    return best_epoch, len(history), False


@pytest.mark.slow
@pytest.mark.timeout(DDP_TIMEOUT_S)
def test_two_workers_stop_early_together_by_the_single_worker_rule(
        local_ray: str, synth_root: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    # A learning rate this small keeps validation UAR flat: the best epoch is the first and the
    # patience runs out at once, on both ranks, whatever their shards: the case that hung.
    p = tiny_params(params, **{
        "train.model": "egemaps_mlp", "train.num_workers": 2, "train.epochs": 12, "train.patience": PATIENCE,
        "train.lr": 1e-7, "train.schedule": "constant", "train.device": "cpu",
        "train.checkpoint_dir": str(tmp_path / "storage"), "tracking.log_model": False})
    # RAY_ADDRESS set = a Ray cluster: the driver stages the inputs on the shared storage.
    monkeypatch.setenv(RAY_ADDRESS_ENV, local_ray)
    res = train(p, manifest, features, tmp_path / "out")
    s = res.summary
    assert s["world_size"] == 2
    history = _history(tmp_path / "storage", s["run_name"])
    best, epochs_run, stopped = single_worker_rule(history, PATIENCE)
    assert (s["best_epoch"], s["epochs_run"], s["stopped_early"]) == (best, epochs_run, stopped)
    assert stopped and epochs_run < p.train.epochs
    # The workers trained on the pack staged for them, which holds what the feature store holds.
    pack = tmp_path / "storage" / "inputs" / f"{s['run_name']}.npz"
    assert pack.is_file()
    cfg = plan(p, manifest, features, tmp_path / "out").worker
    staged, direct = read_inputs(str(pack), cfg), local_inputs(cfg)
    assert len(staged.train) == len(cfg.train_ids) and len(staged.val) == len(cfg.val_ids)
    assert all(np.array_equal(a, b) for a, b in zip(staged.train + staged.val, direct.train + direct.val, strict=True))


def _history(storage: Path, run_name: str) -> list[dict[str, Any]]:
    """Rank 0's per-epoch rows, from the last checkpoint Ray persisted on the shared storage."""
    import torch

    states = sorted((storage / run_name).glob("epoch_*/state.pt"))
    assert states, f"no checkpoint under {storage / run_name}"
    return torch.load(states[-1], weights_only=True)["state"]["history"]


def test_the_global_batch_is_shared_out_over_the_workers() -> None:
    """train.batch_size is the global batch: N workers take batch_size // N rows each per step, so
    the optimiser steps (and the learning rate that suits them) are those of one worker."""
    from affectflow.config import TrainConfig

    tc = TrainConfig(batch_size=32)
    assert [worker_batch_size(tc, n) for n in (0, 1, 2, 4, 64)] == [32, 32, 16, 8, 1]
