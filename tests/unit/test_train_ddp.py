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


def _rank(rank: int, world: int, port: int, out: Any) -> None:
    """One DDP rank (gloo): only rank 1 wants to stop, and each rank has its own BatchNorm statistics."""
    import torch
    import torch.distributed as dist

    from affectflow.stages.train.loop import agree, sync_buffers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        stop = agree(rank == 1, world, torch.device("cpu"))
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank + 1))
        sync_buffers(bn, world)
        out.put((rank, stop, bn.running_mean.tolist()))
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_rank_0s_stopping_decision_and_buffers() -> None:
    """What keeps the two-worker run above from hanging, on two real processes: a rank that would
    stop alone (rank 1) carries on with rank 0, and every rank validates with rank 0's statistics."""
    import torch.multiprocessing as mp

    from affectflow.runtime.netutil import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, out)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        got = sorted(out.get(timeout=120) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert got == [(0, False, [1.0, 1.0, 1.0]), (1, False, [1.0, 1.0, 1.0])]
