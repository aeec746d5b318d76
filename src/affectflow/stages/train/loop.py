"""Training, step 2 (every worker): the epoch loop Ray runs, its checkpoints and its stopping rule.

Reproducible: every epoch draws its order from (seed, epoch) and its crops, augmentation and
dropout from (seed, epoch, rank), and a checkpoint is written every epoch with model, optimiser,
schedule and early-stopping state, so a run killed at any point and started again resumes from its
last checkpoint and ends with the same model as an uninterrupted run.

Several workers (DDP) behave as one: `train.batch_size` is the *global* batch (each of N workers
takes batch_size // N rows per step, so N workers take the same optimiser steps with the same
learning rate as one), rank 0's BatchNorm buffers are broadcast before validation (DDP keeps
parameters equal but not buffers), and rank 0's early-stopping decision is broadcast to every rank,
so all ranks stop at the same epoch and none waits forever in the next all-reduce.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affectflow.config import TrainConfig
from affectflow.contracts.model_folder import load_state_file
from affectflow.metrics import confusion, uar_cm, wa_cm
from affectflow.models import build_model
from affectflow.models import dimensions as dimension_head
from affectflow.models.data import NormStats, augment, collate, normalize, random_crop
from affectflow.runtime.device import autocast, resolve_device, synchronize
from affectflow.runtime.progress import progress
from affectflow.serving.recognizer import predict_logits
from affectflow.stages.train.plan import WorkerConfig
from affectflow.stages.train.shared import STATE_FILE, push, worker_inputs
from affectflow.storage import atomic_dir

log = logging.getLogger(__name__)

ORDER_STREAM = 0
"""Random stream of the epoch's sample order (shared by all workers); worker r draws crops,
augmentation and dropout from stream 1 + r."""
FROZEN = "_affectflow_frozen"
"""Attribute of modules that stay in eval mode (and without gradients) while the rest trains."""


class TrainingInterrupted(RuntimeError):
    """The run stopped on purpose (`train.stop_after_epochs`); the next run resumes it."""


# ----------------------------------------------------------------------------- data of one worker
class WorkerData:
    """Normalised training / validation arrays of one worker, plus synthetic rows (after the real
    ones; `synthetic` marks them, `weight` is their per-sample loss weight, 1 for real rows)."""

    def __init__(self, cfg: WorkerConfig):
        stats = NormStats.from_dict(cfg.stats)
        per = {c: NormStats.from_dict(s) for c, s in cfg.stats_per_corpus.items()}
        raw = worker_inputs(cfg)  # the driver's folders, or the pack staged for remote workers
        self.pretrained_weights = raw.weights

        def norm(arrays: list[np.ndarray], corpora: list[str]) -> list[np.ndarray]:
            return [normalize(a, per.get(c, stats)) for a, c in zip(arrays, corpora, strict=True)]

        self.x = norm(raw.train, cfg.train_corpora)
        self.y = np.asarray(cfg.train_y, np.int64)
        self.synthetic = np.zeros(len(self.y), bool)
        syn = cfg.synthetic
        if syn and syn.rows and raw.synthetic is not None:
            xs = raw.synthetic
            self.x += [normalize(a, stats) for a in xs]
            self.y = np.concatenate([self.y, np.asarray(syn.y, np.int64)])
            self.synthetic = np.concatenate([self.synthetic, np.ones(len(xs), bool)])
        names = sorted(set(cfg.train_corpora))
        # corpus index per row; synthetic rows (after the real ones) are -1
        group = [names.index(c) for c in cfg.train_corpora]
        self.group = np.array(group + [-1] * int(self.synthetic.sum()))
        # recording-condition copies last: labels and corpus of their clip, (corpus, copy) statistics
        self.copy = np.zeros(len(self.y), bool)
        for k, copy in enumerate(raw.copies, start=1):
            self.x += norm(copy, [f"{c}@r{k}" for c in cfg.train_corpora])
            self.y = np.concatenate([self.y, np.asarray(cfg.train_y, np.int64)])
            self.synthetic = np.concatenate([self.synthetic, np.zeros(len(copy), bool)])
            self.copy = np.concatenate([self.copy, np.ones(len(copy), bool)])
            self.group = np.concatenate([self.group, group])
        self.weight = np.where(self.synthetic, cfg.train.synthetic_weight, 1.0).astype(np.float32)
        self.vx = norm(raw.val, cfg.val_corpora)
        self.vy = np.asarray(cfg.val_y, np.int64)
        # dimensional targets per row (NaN: none): real rows, synthetic rows (none), copies (their clip's)
        n_dims = len(cfg.dimension_names)
        self.dims: np.ndarray | None = None
        self.vdims: np.ndarray | None = None
        if n_dims:
            real = np.asarray(cfg.train_dims, np.float32).reshape(-1, n_dims)
            parts = [real, np.full((int(self.synthetic.sum()), n_dims), np.nan, np.float32)] + [real] * len(raw.copies)
            self.dims = np.concatenate(parts)
            self.vdims = np.asarray(cfg.val_dims, np.float32).reshape(-1, n_dims)


# ----------------------------------------------------------------------------- the epoch schedule
def epoch_rng(seed: int, epoch: int, stream: int) -> tuple[np.random.Generator, torch.Generator, int]:
    """Generators that depend only on (seed, epoch, stream): a resumed epoch repeats its draws."""
    ss = np.random.SeedSequence([seed, epoch, stream])
    s = int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))
    return np.random.default_rng(ss), torch.Generator().manual_seed(s), s


def fade_end(tc: TrainConfig) -> int:
    """First epoch without synthetic rows under `synthetic_schedule: fade` (at least 1, so epoch 0
    always has all of them); 0 for the constant schedule."""
    if tc.synthetic_schedule != "fade":
        return 0
    return max(1, round(tc.synthetic_fade_fraction * tc.epochs))


def synthetic_in_epoch(tc: TrainConfig, n_synthetic: int, epoch: int) -> int:
    """How many synthetic rows epoch `epoch` uses: all (constant), or a linear fade to none."""
    end = fade_end(tc)
    if not end:
        return n_synthetic
    return round(max(0.0, 1.0 - epoch / end) * n_synthetic)


def epoch_size(tc: TrainConfig, n_real: int, n_synthetic: int, epoch: int) -> int:
    """Rows in epoch `epoch` (the learning-rate schedule counts its steps from these)."""
    return n_real + synthetic_in_epoch(tc, n_synthetic, epoch)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches over n rows; a trailing batch of one joins the batch before it, since
    BatchNorm cannot normalise a single vector (epoch sizes vary under a fade, so it happens)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n], strict=False)]


def worker_batch_size(tc: TrainConfig, world: int) -> int:
    """Rows per worker per step: the global `train.batch_size` shared out over the workers."""
    return max(1, tc.batch_size // max(world, 1))


def epoch_order(tc: TrainConfig, y: np.ndarray, epoch: int, n_classes: int,
                synthetic: np.ndarray | None = None, group: np.ndarray | None = None,
                copy: np.ndarray | None = None) -> np.ndarray:
    """This epoch's sample order (shared by all workers): a permutation, or a class- / corpus-
    balanced draw, of the real rows and this epoch's draw of the synthetic ones (`synthetic`: mask
    of those; `group`: each row's corpus index, for `corpus_balance`). Recording-condition copies
    (`copy`: mask) join the pool without lengthening the epoch: as many rows are drawn as there
    are rows without them."""
    rng, _, _ = epoch_rng(tc.seed, epoch, ORDER_STREAM)
    rows = np.arange(len(y))
    if synthetic is not None and synthetic.any():
        syn = np.flatnonzero(synthetic)
        k = synthetic_in_epoch(tc, len(syn), epoch)
        if k < len(syn):  # the constant schedule draws nothing here: its order is unchanged
            rows = np.sort(np.concatenate([np.flatnonzero(~synthetic), rng.choice(syn, size=k, replace=False)]))
    n_draw = len(rows) - (int(copy[rows].sum()) if copy is not None else 0)
    w = np.ones(len(rows))
    sampler = tc.class_balance == "sampler"
    if tc.corpus_balance and group is not None:
        # real rows: each corpus (with the sampler: each (corpus, class) cell) the same total weight;
        # synthetic rows (group -1) keep their share of the epoch
        g = group[rows]
        real = g >= 0
        cell = g[real] * n_classes + y[rows][real] if sampler else g[real]
        _, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
        w[real] = real.sum() / (len(counts) * counts[inverse])
        if sampler and (~real).any():
            ys = y[rows][~real]
            w[~real] = (~real).sum() / (len(np.unique(ys)) * np.bincount(ys)[ys])
    elif sampler:
        w /= np.bincount(y[rows], minlength=n_classes).astype(float)[y[rows]]
    if tc.class_balance == "sampler" or (tc.corpus_balance and group is not None):
        return rows[rng.choice(len(rows), size=n_draw, replace=True, p=w / w.sum())]
    return rows[rng.permutation(len(rows))[:n_draw]]


# ----------------------------------------------------------------------------- losses and schedule
def class_weights(tc: TrainConfig, y: np.ndarray, n_classes: int,
                  sample_weight: np.ndarray | None = None) -> torch.Tensor | None:
    """Inverse class frequencies, each row counted with its loss weight (synthetic rows < 1)."""
    if tc.class_balance != "weighted_loss":
        return None
    if sample_weight is None:
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        total = float(len(y))
    else:
        counts = np.bincount(y, weights=sample_weight.astype(np.float64), minlength=n_classes)
        total = float(counts.sum())
    w = np.where(counts > 0, total / (n_classes * np.maximum(counts, 1e-12)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def weighted_loss(loss_fn: nn.CrossEntropyLoss, logits: torch.Tensor, y: torch.Tensor,
                  sample_weight: torch.Tensor | None) -> torch.Tensor:
    """`loss_fn`'s weighted mean with per-sample weights on top of its class weights:
    sum(s_i c_{y_i} l_i) / sum(s_i c_{y_i}). Without sample weights it is `loss_fn` itself (bit for bit)."""
    if sample_weight is None:
        return loss_fn(logits, y)
    per = nn.functional.cross_entropy(logits, y, weight=loss_fn.weight, reduction="none",
                                      label_smoothing=loss_fn.label_smoothing)
    norm = sample_weight if loss_fn.weight is None else sample_weight * loss_fn.weight[y]
    return (sample_weight * per).sum() / norm.sum().clamp_min(1e-12)


def scheduler(tc: TrainConfig, opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if tc.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=max(total_steps, 1),
                                                   pct_start=tc.warmup_fraction)
    if tc.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


# ----------------------------------------------------------------------------- fine-tuning
def unwrap(model: nn.Module) -> nn.Module:
    """The recognizer inside DDP and the dimensions.Joint training wrapper."""
    model = model.module if hasattr(model, "module") else model
    return model.model if isinstance(model, dimension_head.Joint) else model


def freeze_for_finetune(model: nn.Module, mode: str) -> int:
    """Freeze parts of a pretrained encoder (`train.finetune`); returns the number of frozen modules."""
    if mode == "full":
        return 0
    enc = unwrap(model).encoder
    if mode == "freeze_encoder":
        frozen = [enc]
    else:
        frozen = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in frozen:
        setattr(m, FROZEN, True)
        m.requires_grad_(False)
    return len(frozen)


def train_mode(model: nn.Module) -> None:
    """model.train(), except frozen modules (their BatchNorm statistics must not move)."""
    model.train()
    for m in model.modules():
        if getattr(m, FROZEN, False):
            m.eval()


# ----------------------------------------------------------------------------- ranks agreeing
def _distributed(world: int) -> bool:
    return world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def sync_buffers(model: nn.Module, world: int) -> None:
    """Rank 0's BatchNorm running statistics on every rank (parameters are equal under DDP, buffers
    are not), so every rank validates the same model."""
    if not _distributed(world):
        return
    for buf in unwrap(model).buffers():
        torch.distributed.broadcast(buf.data, src=0)


def agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's value of `flag` on every rank: one stopping decision for all."""
    if not _distributed(world):
        return flag
    t = torch.tensor([1 if flag else 0], device=device if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


# ----------------------------------------------------------------------------- one epoch
def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                loss_fn: nn.CrossEntropyLoss, data: WorkerData, order: np.ndarray, tc: TrainConfig,
                batch_size: int, rng: np.random.Generator, gen: torch.Generator,
                device: torch.device, n_classes: int | None = None) -> tuple[float, int, int]:
    """One pass over `order`: random crops, augmentation, optional mixup; (summed loss, n, correct).
    Batches with synthetic rows weigh them by `synthetic_weight`; all-real batches use `loss_fn` as is.
    With dimensional targets (`data.dims`) the model is `dimensions.Joint` (logits, then dimensions:
    `n_classes` splits them) and the loss adds `dimension_weight` x (1 - CCC)."""
    train_mode(model)
    amp = autocast(device, tc.mixed_precision)
    tot_loss, tot_n, tot_correct = 0.0, 0, 0
    for batch in batch_slices(len(order), batch_size):
        idx = order[batch]
        xs = [random_crop(data.x[j], tc.crop_frames, rng) if data.x[j].ndim > 1 else data.x[j] for j in idx]
        x, lens = collate(xs)
        # Masks are drawn on the CPU generator (reproducible) and applied where the batch lives.
        x = augment(x.to(device, non_blocking=True), lens, tc.specaugment, gen)
        yb = torch.from_numpy(data.y[idx])
        db = None if data.dims is None else torch.from_numpy(data.dims[idx])
        sw = torch.from_numpy(data.weight[idx]).to(device) if (data.weight[idx] != 1).any() else None
        lam, perm = 1.0, None
        if tc.mixup_alpha > 0:
            lam = float(rng.beta(tc.mixup_alpha, tc.mixup_alpha))
            perm = torch.randperm(len(idx), generator=gen)
            x = lam * x + (1 - lam) * x[perm]
            if db is not None:
                db = lam * db + (1 - lam) * db[perm]
            if lens is not None:
                lens = torch.maximum(lens, lens[perm])
        x, yb = x.to(device), yb.to(device)
        with amp:
            logits = model(x, None if lens is None else lens.to(device))
            if db is not None:  # dimensions.Joint: (B, C + n)
                logits, dims = logits[:, :n_classes], logits[:, n_classes:]
            loss = weighted_loss(loss_fn, logits.float(), yb, sw)
            if perm is not None:
                pdev = perm.to(device)
                loss = lam * loss + (1 - lam) * weighted_loss(loss_fn, logits.float(), yb[pdev],
                                                              None if sw is None else sw[pdev])
            if db is not None:
                loss = loss + tc.dimension_weight * dimension_head.ccc_loss(dims.float(), db.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        tot_loss += float(loss.detach()) * len(idx)
        tot_n += len(idx)
        tot_correct += int((logits.argmax(1) == yb).sum())
    return tot_loss, tot_n, tot_correct


def latest_local(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("epoch_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _device(cfg: WorkerConfig, local: bool) -> torch.device:
    import ray.train.torch

    if local:
        return resolve_device(cfg.train.device, "train.device")
    return ray.train.torch.get_device()


def _build(cfg: WorkerConfig, device: torch.device, pretrained: dict[str, torch.Tensor] | None) -> nn.Module:
    import ray.train.torch

    model = build_model(cfg.arch, cfg.arch_config, cfg.input_dim, len(cfg.classes))
    if cfg.pretrained and pretrained is not None:
        enc = {k[len("encoder."):]: v for k, v in pretrained.items() if k.startswith("encoder.")}
        model.encoder.load_state_dict(enc)
        freeze_for_finetune(model, cfg.train.finetune)
    if cfg.dimension_names:  # one forward for both heads, so DDP sees every parameter it syncs
        model = dimension_head.Joint(dimension_head.attach(model, len(cfg.dimension_names)))
    return ray.train.torch.prepare_model(model, move_to_device=device)


def _resume(cfg: WorkerConfig, local: bool) -> dict[str, Any] | None:
    import ray.train
    from ray.train import Checkpoint

    ckpt = ray.train.get_checkpoint()
    if ckpt is None and local:
        found = latest_local(Path(cfg.ckpt_dir))
        ckpt = Checkpoint.from_directory(str(found)) if found else None
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return load_state_file(Path(d) / STATE_FILE)  # a truncated checkpoint's error names the file


@dataclass
class _Run:
    """One worker's training objects, built once (and restored from a checkpoint)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.CrossEntropyLoss
    weights: torch.Tensor | None
    sample_w: np.ndarray | None
    per_batch: int
    refocus: int
    """Early stopping counts only from this epoch (a fade's real-only epochs)."""


def _setup(cfg: WorkerConfig, data: WorkerData, device: torch.device, world: int) -> _Run:
    tc = cfg.train
    n_classes = len(cfg.classes)
    torch.manual_seed(tc.seed)
    model = _build(cfg, device, data.pretrained_weights)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n_syn = int(data.synthetic.sum())
    n_real = len(data.y) - n_syn - int(data.copy.sum())
    per_batch = worker_batch_size(tc, world)
    # Equal shards (DDP needs the same number of steps on every worker); a fading synthetic share
    # makes later epochs shorter, and the schedule counts the steps of each.
    steps = sum(max(1, len(batch_slices(epoch_size(tc, n_real, n_syn, e) // world, per_batch)))
                for e in range(tc.epochs))
    sched = scheduler(tc, opt, steps)
    sample_w = data.weight if n_syn and tc.synthetic_weight != 1 else None
    weights = class_weights(tc, data.y, n_classes, sample_w)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                  label_smoothing=tc.label_smoothing)
    return _Run(model, opt, sched, loss_fn, weights, sample_w, per_batch, fade_end(tc))


def _epoch(cfg: WorkerConfig, r: _Run, data: WorkerData, epoch: int, rank: int, world: int,
           device: torch.device) -> dict[str, Any]:
    """Train one epoch on this rank's shard, validate; the epoch's row of the history."""
    tc = cfg.train
    n_classes = len(cfg.classes)
    rng, gen, seed = epoch_rng(tc.seed, epoch, 1 + rank)
    torch.manual_seed(seed)  # dropout
    full = epoch_order(tc, data.y, epoch, n_classes, data.synthetic, data.group, data.copy)
    shard = len(full) // world
    order = full[: shard * world][rank::world]
    epoch_loss = r.loss_fn
    if r.refocus and r.weights is not None:  # class weights of the rows this epoch trains on
        rows = np.unique(full)
        ew = class_weights(tc, data.y[rows], n_classes, None if r.sample_w is None else r.sample_w[rows])
        epoch_loss = nn.CrossEntropyLoss(weight=ew.to(device), label_smoothing=tc.label_smoothing)
    t_start = time.perf_counter()
    tot_loss, tot_n, tot_correct = train_epoch(r.model, r.opt, r.sched, epoch_loss, data, order, tc, r.per_batch,
                                               rng, gen, device, n_classes)
    synchronize(device)
    t_train = time.perf_counter()
    sync_buffers(r.model, world)
    dim_scores: dict[str, float] = {}
    if data.vx:
        amp = autocast(device, tc.mixed_precision)
        if data.vdims is not None:
            both = predict_logits(dimension_head.Joint(unwrap(r.model)), data.vx, device, tc.batch_size, amp)
            logits = both[:, :n_classes]
            for j, name in enumerate(cfg.dimension_names):
                ok = ~np.isnan(data.vdims[:, j])
                if ok.sum() >= dimension_head.MIN_ROWS:
                    dim_scores[f"val_ccc_{name}"] = float(dimension_head.ccc(both[ok, n_classes + j],
                                                                             torch.from_numpy(data.vdims[ok, j])))
        else:
            logits = predict_logits(unwrap(r.model), data.vx, device, tc.batch_size, amp)
        cm = confusion(data.vy, logits.argmax(1).numpy(), n_classes)
        val_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(data.vy), weight=r.weights))
    else:  # no validation speakers (train.checkpoint: last)
        cm, val_loss = np.zeros((n_classes, n_classes), np.int64), float("nan")
    t_val = time.perf_counter()
    return {"epoch": epoch, "train_loss": tot_loss / max(tot_n, 1), "train_acc": tot_correct / max(tot_n, 1),
            "val_loss": val_loss, "val_uar": uar_cm(cm), "val_wa": wa_cm(cm), "lr": float(r.sched.get_last_lr()[0]),
            "train_seconds": t_train - t_start, "val_seconds": t_val - t_train,
            "train_samples_per_s": tot_n * world / max(t_train - t_start, 1e-9),
            "synthetic_rows": int(data.synthetic[full].sum()), **dim_scores}


def _decide(st: dict[str, Any], row: dict[str, Any], r: _Run, tc: TrainConfig, world: int,
            device: torch.device) -> None:
    """Best epoch and early stopping: rank 0's decision on every rank."""
    epoch = row["epoch"]
    if tc.checkpoint == "last":  # a fixed budget: the final epoch's weights, no early stopping
        st.update(best_uar=row["val_uar"], best_epoch=epoch,
                  best_state={k: v.detach().cpu().clone() for k, v in unwrap(r.model).state_dict().items()})
        st["epoch"] = epoch + 1
        return
    if agree(row["val_uar"] > st["best_uar"], world, device):
        st.update(best_uar=row["val_uar"], best_epoch=epoch, bad=0,
                  best_state={k: v.detach().cpu().clone() for k, v in unwrap(r.model).state_dict().items()})
    elif epoch >= r.refocus:  # a fade's synthetic-heavy epochs do not use up the patience
        st["bad"] += 1
    st["epoch"] = epoch + 1
    st["stopped"] = agree(st["bad"] >= tc.patience, world, device)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """The training function Ray runs on every worker (or in-process in local mode)."""
    import ray.train

    cfg: WorkerConfig = config["worker"]
    tc = cfg.train
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device(cfg, cfg.local_mode)
    data = WorkerData(cfg)
    r = _setup(cfg, data, device, world)
    st: dict[str, Any] = {"epoch": 0, "best_uar": -1.0, "best_epoch": -1, "best_state": None, "bad": 0,
                          "history": [], "stopped": False}
    saved = _resume(cfg, cfg.local_mode)
    if saved is not None:
        unwrap(r.model).load_state_dict(saved["model"])
        r.opt.load_state_dict(saved["optimizer"])
        r.sched.load_state_dict(saved["scheduler"])
        st = saved["state"]
        if rank == 0:
            log.warning("resuming %s from epoch %d", Path(cfg.ckpt_dir).name, st["epoch"])
    mlf = None
    if rank == 0 and cfg.mlflow:
        from affectflow.tracking.runs import EpochLogger

        mlf = EpochLogger(cfg.mlflow["tracking_uri"], cfg.mlflow["run_id"])
    first = st["epoch"]
    epochs = range(first, tc.epochs)
    bar = progress(epochs, f"train {cfg.arch}", total=len(epochs), unit="epoch") if rank == 0 else epochs
    for epoch in bar:
        if st["stopped"]:
            break
        row = _epoch(cfg, r, data, epoch, rank, world, device)
        st["history"].append(row)
        _decide(st, row, r, tc, world, device)
        scores = {k: v for k, v in row.items() if k != "epoch"}
        save_and_report(cfg, rank, cfg.local_mode, epoch, scores | {"epoch": epoch, "best_val_uar": st["best_uar"]},
                        {"model": unwrap(r.model).state_dict(), "optimizer": r.opt.state_dict(),
                         "scheduler": r.sched.state_dict(), "state": st})
        if mlf is not None:
            mlf(epoch, scores)
        if rank == 0 and hasattr(bar, "set_postfix"):
            if math.isnan(row["val_uar"]):  # no validation speakers (train.checkpoint: last)
                bar.set_postfix(train_loss=f"{row['train_loss']:.3f}", train_acc=f"{row['train_acc']:.3f}")
            else:
                bar.set_postfix(val_uar=f"{row['val_uar']:.3f}", best=f"{st['best_uar']:.3f}")
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if tc.stop_after_epochs and epoch + 1 - first >= tc.stop_after_epochs and st["epoch"] < tc.epochs and not st["stopped"]:
            raise TrainingInterrupted(f"train.stop_after_epochs={tc.stop_after_epochs}: stopped after epoch "
                                      f"{epoch}; run again to resume from {cfg.ckpt_uri or cfg.ckpt_dir}")
    if rank != 0:
        return None
    # Ray cannot return tensors from workers: the best weights travel as numpy arrays.
    best = {k: v.numpy() for k, v in st["best_state"].items()} if st["best_state"] is not None else None
    return {"history": st["history"], "best_state": best, "best_epoch": st["best_epoch"],
            "best_uar": st["best_uar"], "stopped_early": st["stopped"], "device": str(device), "world_size": world}


def save_and_report(cfg: WorkerConfig, rank: int, local: bool, epoch: int, metrics: dict[str, Any],
                    state: dict[str, Any]) -> None:
    """Checkpoint every epoch. Ray persists reported checkpoints under RunConfig.storage_path;
    local mode does not, so there the loop keeps the last `checkpoints_to_keep` epochs itself
    (same layout)."""
    import ray.train
    from ray.train import Checkpoint

    name = f"epoch_{epoch:04d}"
    ckpt_dir = Path(cfg.ckpt_dir)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    if local:
        with atomic_dir(ckpt_dir / name) as tmp:
            torch.save(state, tmp / STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(ckpt_dir / name)))
        for old in sorted(ckpt_dir.glob("epoch_*"))[:-cfg.train.checkpoints_to_keep]:
            shutil.rmtree(old, ignore_errors=True)
        push(cfg, prune=True)  # an s3:// checkpoint folder follows the local mirror, epoch by epoch
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
