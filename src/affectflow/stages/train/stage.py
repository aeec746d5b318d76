"""Stage — train: the recognizer, through Ray Train's `TorchTrainer`, resumable and tracked.

One `train_loop_per_worker` serves every scale: with `train.num_workers: 0` it runs in this
process (Ray Train local mode: laptop, CI); with N >= 1 it runs on N Ray workers with DDP (a local
Ray is started for the run unless RAY_ADDRESS points at a cluster), on GPUs with `use_gpu`.

Honest numbers: the checkpoint kept is the epoch with the best *validation* UAR (the test split is
never read here) and training stops when validation UAR has not improved for `patience` epochs.
Reproducible: every epoch draws its crops, augmentation, dropout and order from (seed, epoch), and
a checkpoint is written every epoch with model, optimiser, schedule and early-stopping state, so a
run killed at any point and started again resumes from its last checkpoint and ends with the same
model as an uninterrupted run. Runs are named by a hash of their configuration and data, so the
same command resumes and a changed one starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from affectflow.config import Params, TrainConfig
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.metrics import confusion, uar_cm, wa_cm
from affectflow.models import arch_config, build_model, feature_kind
from affectflow.models.data import (
    NormStats,
    augment,
    collate,
    compute_stats,
    normalize,
    random_crop,
)
from affectflow.runtime.progress import progress
from affectflow.serving.recognizer import (
    corpus_normalization,
    load_state,
    predict_logits,
    read_meta,
    save_model_dir,
)
from affectflow.storage import atomic_dir, atomic_write_json, atomic_write_text, save_figure

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
RUNTIME_KEYS = ("num_workers", "use_gpu", "threads", "checkpoints_to_keep", "stop_after_epochs", "max_failures")
"""train.* settings that change how a run executes, not what it computes (excluded from the run name)."""
SYNTHETIC_KEYS = ("synthetic_weight", "synthetic_schedule", "synthetic_fade_fraction")
"""train.* settings that act on synthetic rows only: in the run name only with synthetic rows and
when not at their defaults, so runs named before these settings existed keep their names."""


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message names the file and the field."""


class TrainingInterrupted(RuntimeError):
    """The run stopped on purpose (`train.stop_after_epochs`); the next run resumes it."""


@dataclass
class TrainResult:
    model_dir: Path
    summary: dict[str, Any]


# ----------------------------------------------------------------------------- planning (driver)
@dataclass
class Plan:
    """Everything the training loop needs, as plain data (it is shipped to Ray workers)."""

    config: dict[str, Any]
    run_name: str
    meta: dict[str, Any]


def _split_rows(params: Params, df: pd.DataFrame, manifest: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    src = df[df["role"] == "source"] if "role" in df.columns else df
    tr = src[src["split"] == "train"]
    classes = [c for c in params.ingest.classes if c in set(tr["emotion"])]
    if len(classes) < 2:
        raise TrainingError(f"{manifest}: the training split has {len(classes)} of the classes "
                            f"{params.ingest.classes} (field 'emotion'); need at least 2")
    tr = tr[tr["emotion"].isin(classes)]
    va = src[(src["split"] == "val") & src["emotion"].isin(classes)]
    if va.empty:
        raise TrainingError(f"{manifest}: no validation rows (field 'split' == 'val'); early stopping and "
                            "checkpoint selection need validation speakers (splits.val_fraction)")
    return tr, va, classes


def _feature_key(fs: FeatureSet, kind: str, ids: list[str]) -> str:
    rows = fs.index[(fs.index["kind"] == kind) & fs.index["utt_id"].isin(ids)]
    keys = sorted(set(rows["key"].astype(str)))
    if len(keys) > 1:
        raise TrainingError(f"{fs.root}: '{kind}' features of the training clips come from {len(keys)} "
                            f"configurations {keys}; re-run `affectflow features`")
    return keys[0] if keys else ""


def _check_feature_key(params: Params, kind: str, key: str, root: Path) -> None:
    """The features must come from params.features: model.json stores that configuration, and the
    pyfunc recomputes features from audio with it."""
    from affectflow.stages.features import feature_keys

    f = params.features
    want = feature_keys(params.model_copy(update={"features": f.model_copy(update={"kinds": [kind]})})).get(kind)
    if want and key != want:
        raise TrainingError(f"{root}: '{kind}' features have configuration key '{key}' but params.features "
                            f"(with audio.sample_rate) give '{want}'; re-run `affectflow features` with these params")


def _check_pretrained(path: str | Path, arch: str, kind: str, cfg: dict[str, Any], input_dim: int) -> dict[str, Any]:
    meta = read_meta(path)
    where = f"{Path(path) / 'model.json'}"
    for field, want in (("arch", arch), ("feature", kind), ("arch_config", cfg), ("input_dim", input_dim)):
        if meta.get(field) != want:
            raise TrainingError(f"{where}: field '{field}' is {meta.get(field)!r} but this run needs {want!r}")
    return meta


def select_synthetic(path: str | Path, kind: str, classes: list[str], train_y: np.ndarray,
                     tc: TrainConfig) -> dict[str, Any] | None:
    """Rows of an augment output to add: kept samples of our classes, `synthetic_ratio` per real
    training sample, spent on the smallest classes first with `balance_minority`."""
    if tc.synthetic_ratio <= 0:
        return None
    f = Path(path)
    f = f / "synthetic.npz" if f.is_dir() else f
    try:
        npz = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise TrainingError(f"{f}: synthetic set not found (train.synthetic_ratio > 0)") from None
    for field in ("X", "y", "classes", "feature", "kept"):
        if field not in npz.files:
            raise TrainingError(f"{f}: missing field '{field}'")
    if str(npz["feature"]) != kind:
        raise TrainingError(f"{f}: field 'feature' is '{npz['feature']}' but train.model reads '{kind}'")
    syn_classes = [str(c) for c in npz["classes"]]
    to_ours = np.array([classes.index(c) if c in classes else -1 for c in syn_classes])
    y = to_ours[np.asarray(npz["y"], dtype=np.int64)]
    ok = np.flatnonzero(np.asarray(npz["kept"], bool) & (y >= 0))
    budget = min(round(tc.synthetic_ratio * len(train_y)), len(ok))
    rng = np.random.default_rng([tc.seed, 7])
    if tc.balance_minority:
        counts = np.bincount(train_y, minlength=len(classes)).astype(float)
        pools = {c: list(rng.permutation(ok[y[ok] == c])) for c in range(len(classes))}
        rows: list[int] = []
        for _ in range(budget):  # water-filling: one sample to the currently smallest class with stock
            open_ = [c for c in range(len(classes)) if pools[c]]
            if not open_:
                break
            c = min(open_, key=lambda k: counts[k])
            rows.append(int(pools[c].pop()))
            counts[c] += 1
        chosen = np.array(sorted(rows), dtype=np.int64)
    else:
        chosen = np.sort(rng.choice(ok, size=budget, replace=False)) if budget else np.zeros(0, np.int64)
    return {"path": str(f.resolve()), "rows": chosen.tolist(), "y": y[chosen].tolist(),
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest()[:16]}


def plan(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path,
         pretrained: str | Path | None = None, synthetic: str | Path | None = None) -> Plan:
    """Choose rows, classes and normalisation (training split only) and name the run."""
    from affectflow.tracking import runs as tracking

    tc = params.train
    df = read_manifest(manifest)
    tr, va, classes = _split_rows(params, df, manifest)
    kind = feature_kind(tc.model)
    fs = FeatureSet(features_dir)
    train_ids, val_ids = tr["utt_id"].tolist(), va["utt_id"].tolist()
    arrays = fs.load(kind, train_ids, mmap=True)
    input_dim = int(arrays[0].shape[0])
    acfg = arch_config(tc)
    pre_meta = _check_pretrained(pretrained, tc.model, kind, acfg, input_dim) if pretrained else None
    mode = "global" if kind != "logmel" else tc.normalize
    if pre_meta and pre_meta["normalization"].get("mode") == mode:
        stats = NormStats.from_dict(pre_meta["normalization"])  # the encoder was trained on these
    else:
        stats = compute_stats(arrays, mode)
    per_corpus, deploy_corpus = corpus_normalization(pre_meta)
    del arrays
    y_of = {c: i for i, c in enumerate(classes)}
    train_y = tr["emotion"].map(y_of).to_numpy()
    syn = select_synthetic(synthetic, kind, classes, train_y, tc) if synthetic else None
    feature_cfg = getattr(params.features, kind).model_dump(mode="json") if hasattr(params.features, kind) else {}
    key = _feature_key(fs, kind, train_ids + val_ids)
    _check_feature_key(params, kind, key, fs.root)
    what = {
        "train": {k: v for k, v in tc.model_dump(mode="json").items() if k not in RUNTIME_KEYS
                  and not (k in SYNTHETIC_KEYS and (not syn or v == TrainConfig.model_fields[k].default))},
        "classes": classes, "train_ids": train_ids, "val_ids": val_ids, "feature_key": key,
        "stats": stats.as_dict(), "pretrained": pre_meta and pre_meta.get("lineage"),
        "synthetic": syn and {"sha256": syn["sha256"], "rows": syn["rows"]},
    }
    run_name = f"{tc.model}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]}"
    out = Path(out_dir).resolve()
    config = {
        "train": tc.model_dump(mode="json"), "arch": tc.model, "arch_config": acfg, "classes": classes,
        "feature": kind, "input_dim": input_dim, "features_dir": str(Path(features_dir).resolve()),
        "train_ids": train_ids, "train_y": train_y.tolist(), "val_ids": val_ids,
        "val_y": va["emotion"].map(y_of).tolist(), "stats": stats.as_dict(), "stats_per_corpus": per_corpus,
        "train_corpora": tr["corpus"].astype(str).tolist(), "val_corpora": va["corpus"].astype(str).tolist(),
        "pretrained": str(Path(pretrained).resolve()) if pretrained else None, "synthetic": syn,
        "ckpt_dir": str(out / "checkpoints" / run_name), "local_mode": tc.num_workers == 0,
        "mlflow": None,
    }
    meta = {
        "arch": tc.model, "classes": classes, "feature": kind, "feature_config": feature_cfg,
        "feature_key": key, "audio": params.audio.model_dump(mode="json"), "normalization": stats.as_dict(),
        "normalization_per_corpus": per_corpus, "deploy_corpus": deploy_corpus,
        "arch_config": acfg, "input_dim": input_dim,
        "lineage": {**tracking.lineage(params, df, manifest, features_dir), "run_name": run_name,
                    "pretrained": str(pretrained or ""), "synthetic": syn["sha256"] if syn else ""},
        "train": {"corpora": sorted(set(tr["corpus"])), "n_train": len(train_ids), "n_val": len(val_ids),
                  "n_synthetic": len(syn["rows"]) if syn else 0,
                  "train_speakers": sorted(set(tr["speaker"])), "val_speakers": sorted(set(va["speaker"]))},
    }
    return Plan(config=config, run_name=run_name, meta=meta)


# ----------------------------------------------------------------------------- the loop (workers)
class _Data:
    """Normalised training / validation arrays of one worker, plus synthetic rows (after the real
    ones; `synthetic` marks them, `weight` is their per-sample loss weight, 1 for real rows)."""

    def __init__(self, cfg: dict[str, Any]):
        stats = NormStats.from_dict(cfg["stats"])
        per = {c: NormStats.from_dict(s) for c, s in (cfg.get("stats_per_corpus") or {}).items()}
        fs = FeatureSet(cfg["features_dir"])

        def norm(ids: list[str], corpora: list[str] | None) -> list[np.ndarray]:
            arrays = fs.load(cfg["feature"], ids)
            return [normalize(a, per.get(c, stats)) for a, c in zip(arrays, corpora or [""] * len(ids), strict=True)]

        self.x = norm(cfg["train_ids"], cfg.get("train_corpora"))
        self.y = np.asarray(cfg["train_y"], np.int64)
        self.synthetic = np.zeros(len(self.y), bool)
        syn = cfg.get("synthetic")
        if syn and syn["rows"]:
            with np.load(syn["path"], allow_pickle=False) as npz:
                xs = np.asarray(npz["X"])[np.asarray(syn["rows"], np.int64)]
            self.x += [normalize(a, stats) for a in xs]
            self.y = np.concatenate([self.y, np.asarray(syn["y"], np.int64)])
            self.synthetic = np.concatenate([self.synthetic, np.ones(len(xs), bool)])
        w = float(cfg["train"].get("synthetic_weight", 1.0))
        self.weight = np.where(self.synthetic, w, 1.0).astype(np.float32)
        self.vx = norm(cfg["val_ids"], cfg.get("val_corpora"))
        self.vy = np.asarray(cfg["val_y"], np.int64)


ORDER_STREAM = 0
"""Random stream of the epoch's sample order (shared by all workers); worker r draws crops,
augmentation and dropout from stream 1 + r."""


def _epoch_rng(seed: int, epoch: int, stream: int) -> tuple[np.random.Generator, torch.Generator, int]:
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


def _epoch_order(tc: TrainConfig, y: np.ndarray, epoch: int, n_classes: int,
                 synthetic: np.ndarray | None = None) -> np.ndarray:
    """This epoch's sample order (shared by all workers): a permutation, or a class-balanced draw,
    of the real rows and this epoch's draw of the synthetic ones (`synthetic`: mask of those)."""
    rng, _, _ = _epoch_rng(tc.seed, epoch, ORDER_STREAM)
    rows = np.arange(len(y))
    if synthetic is not None and synthetic.any():
        syn = np.flatnonzero(synthetic)
        k = synthetic_in_epoch(tc, len(syn), epoch)
        if k < len(syn):  # the constant schedule draws nothing here: its order is unchanged
            rows = np.sort(np.concatenate([np.flatnonzero(~synthetic), rng.choice(syn, size=k, replace=False)]))
    if tc.class_balance == "sampler":
        counts = np.bincount(y[rows], minlength=n_classes).astype(float)
        w = 1.0 / counts[y[rows]]
        return rows[rng.choice(len(rows), size=len(rows), replace=True, p=w / w.sum())]
    return rows[rng.permutation(len(rows))]


def _class_weights(tc: TrainConfig, y: np.ndarray, n_classes: int,
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


def _scheduler(tc: TrainConfig, opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if tc.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=max(total_steps, 1),
                                                   pct_start=tc.warmup_fraction)
    if tc.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


def _autocast(device: torch.device, tc: TrainConfig) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda" and tc.mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so epoch timings measure compute and not just the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _latest_local(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("epoch_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


FROZEN = "_affectflow_frozen"
"""Attribute of modules that stay in eval mode (and without gradients) while the rest trains."""


def freeze_for_finetune(model: nn.Module, mode: str) -> int:
    """Freeze parts of a pretrained encoder (`train.finetune`); returns the number of frozen modules."""
    if mode == "full":
        return 0
    enc = _unwrap(model).encoder
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


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 loss_fn: nn.CrossEntropyLoss, data: _Data, order: np.ndarray, tc: TrainConfig, rng: np.random.Generator,
                 gen: torch.Generator, device: torch.device,
                 amp: contextlib.AbstractContextManager[Any]) -> tuple[float, int, int]:
    """One pass over `order`: random crops, augmentation, optional mixup; (summed loss, n, correct).
    Batches with synthetic rows weigh them by `synthetic_weight`; all-real batches use `loss_fn` as is."""
    train_mode(model)
    tot_loss, tot_n, tot_correct = 0.0, 0, 0
    for batch in batch_slices(len(order), tc.batch_size):
        idx = order[batch]
        xs = [random_crop(data.x[j], tc.crop_frames, rng) if data.x[j].ndim > 1 else data.x[j] for j in idx]
        x, lens = collate(xs)
        # Masks are drawn on the CPU generator (reproducible) and applied where the batch lives.
        x = augment(x.to(device, non_blocking=True), lens, tc.specaugment, gen)
        yb = torch.from_numpy(data.y[idx])
        sw = torch.from_numpy(data.weight[idx]).to(device) if (data.weight[idx] != 1).any() else None
        lam, perm = 1.0, None
        if tc.mixup_alpha > 0:
            lam = float(rng.beta(tc.mixup_alpha, tc.mixup_alpha))
            perm = torch.randperm(len(idx), generator=gen)
            x = lam * x + (1 - lam) * x[perm]
            if lens is not None:
                lens = torch.maximum(lens, lens[perm])
        x, yb = x.to(device), yb.to(device)
        with amp:
            logits = model(x, None if lens is None else lens.to(device))
            loss = weighted_loss(loss_fn, logits.float(), yb, sw)
            if perm is not None:
                pdev = perm.to(device)
                loss = lam * loss + (1 - lam) * weighted_loss(loss_fn, logits.float(), yb[pdev],
                                                              None if sw is None else sw[pdev])
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


def train_loop_per_worker(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The training function Ray runs on every worker (or in-process in local mode)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    tc = TrainConfig.model_validate(cfg["train"])
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local = bool(cfg["local_mode"])
    if local:
        device = torch.device("cuda" if tc.use_gpu and torch.cuda.is_available() else "cpu")
    else:
        device = ray.train.torch.get_device()
    n_classes = len(cfg["classes"])
    data = _Data(cfg)
    torch.manual_seed(tc.seed)
    model = build_model(cfg["arch"], cfg["arch_config"], cfg["input_dim"], n_classes)
    if cfg["pretrained"]:
        enc = {k[len("encoder."):]: v for k, v in load_state(cfg["pretrained"]).items() if k.startswith("encoder.")}
        model.encoder.load_state_dict(enc)
        freeze_for_finetune(model, tc.finetune)
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n_syn = int(data.synthetic.sum())
    n_real = len(data.y) - n_syn
    # Equal shards (DDP needs the same number of steps on every worker); a fading synthetic share
    # makes later epochs shorter, and the schedule counts the steps of each.
    steps = sum(max(1, len(batch_slices(epoch_size(tc, n_real, n_syn, e) // world, tc.batch_size)))
                for e in range(tc.epochs))
    sched = _scheduler(tc, opt, steps)
    sample_w = data.weight if n_syn and tc.synthetic_weight != 1 else None
    weights = _class_weights(tc, data.y, n_classes, sample_w)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device), label_smoothing=tc.label_smoothing)
    refocus = fade_end(tc)  # early stopping counts only from here (the real-only epochs)
    amp = _autocast(device, tc)
    st: dict[str, Any] = {"epoch": 0, "best_uar": -1.0, "best_epoch": -1, "best_state": None, "bad": 0,
                          "history": [], "stopped": False}

    ckpt_dir = Path(cfg["ckpt_dir"])
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and local:
        found = _latest_local(ckpt_dir)
        ckpt = Checkpoint.from_directory(str(found)) if found else None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        st = saved["state"]
        if rank == 0:
            log.warning("resuming %s from epoch %d", ckpt_dir.name, st["epoch"])

    mlf = None
    if rank == 0 and cfg.get("mlflow"):
        from affectflow.tracking.runs import EpochLogger

        mlf = EpochLogger(cfg["mlflow"]["tracking_uri"], cfg["mlflow"]["run_id"])

    first = st["epoch"]
    epochs = range(first, tc.epochs)
    bar = progress(epochs, f"train {cfg['arch']}", total=len(epochs), unit="epoch") if rank == 0 else epochs
    for epoch in bar:
        if st["stopped"]:
            break
        rng, gen, seed = _epoch_rng(tc.seed, epoch, 1 + rank)
        torch.manual_seed(seed)  # dropout
        full = _epoch_order(tc, data.y, epoch, n_classes, data.synthetic)
        per_worker = len(full) // world
        order = full[: per_worker * world][rank::world]
        epoch_loss = loss_fn
        if refocus and weights is not None:  # class weights of the rows this epoch trains on
            rows = np.unique(full)
            ew = _class_weights(tc, data.y[rows], n_classes, None if sample_w is None else sample_w[rows])
            epoch_loss = nn.CrossEntropyLoss(weight=ew.to(device), label_smoothing=tc.label_smoothing)
        t_start = time.perf_counter()
        tot_loss, tot_n, tot_correct = _train_epoch(model, opt, sched, epoch_loss, data, order, tc, rng, gen,
                                                    device, amp)
        _sync(device)
        t_train = time.perf_counter()
        logits = predict_logits(_unwrap(model), data.vx, device, tc.batch_size, amp)
        t_val = time.perf_counter()
        vy = torch.from_numpy(data.vy)
        cm = confusion(data.vy, logits.argmax(1).numpy(), n_classes)
        row = {"epoch": epoch, "train_loss": tot_loss / max(tot_n, 1), "train_acc": tot_correct / max(tot_n, 1),
               "val_loss": float(nn.functional.cross_entropy(logits, vy, weight=weights)),
               "val_uar": uar_cm(cm), "val_wa": wa_cm(cm), "lr": float(sched.get_last_lr()[0]),
               "train_seconds": t_train - t_start, "val_seconds": t_val - t_train,
               "train_samples_per_s": tot_n * world / max(t_train - t_start, 1e-9),
               "synthetic_rows": int(data.synthetic[full].sum())}
        st["history"].append(row)
        if row["val_uar"] > st["best_uar"]:
            st.update(best_uar=row["val_uar"], best_epoch=epoch, bad=0,
                      best_state={k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()})
        elif epoch >= refocus:  # a fade's synthetic-heavy epochs do not use up the patience
            st["bad"] += 1
        st["epoch"] = epoch + 1
        st["stopped"] = st["bad"] >= tc.patience
        metrics = {k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch, "best_val_uar": st["best_uar"]}
        _save_and_report(cfg, rank, local, ckpt_dir, epoch, metrics,
                         {"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "state": st}, tc.checkpoints_to_keep)
        if mlf is not None:
            mlf(epoch, {k: v for k, v in row.items() if k != "epoch"})
        if rank == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(val_uar=f"{row['val_uar']:.3f}", best=f"{st['best_uar']:.3f}")
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if tc.stop_after_epochs and epoch + 1 - first >= tc.stop_after_epochs and st["epoch"] < tc.epochs and not st["stopped"]:
            raise TrainingInterrupted(f"train.stop_after_epochs={tc.stop_after_epochs}: stopped after epoch "
                                      f"{epoch}; run again to resume from {ckpt_dir}")
    if rank != 0:
        return None
    # Ray cannot return tensors from workers: the best weights travel as numpy arrays.
    best = {k: v.numpy() for k, v in st["best_state"].items()} if st["best_state"] is not None else None
    return {"history": st["history"], "best_state": best, "best_epoch": st["best_epoch"],
            "best_uar": st["best_uar"], "stopped_early": st["stopped"], "device": str(device), "world_size": world}


def _save_and_report(cfg: dict[str, Any], rank: int, local: bool, ckpt_dir: Path, epoch: int,
                     metrics: dict[str, Any], state: dict[str, Any], keep: int) -> None:
    """Checkpoint every epoch. Ray persists reported checkpoints under RunConfig.storage_path;
    local mode does not, so there the loop keeps the last `keep` epochs itself (same layout)."""
    import ray.train
    from ray.train import Checkpoint

    name = f"epoch_{epoch:04d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    if local:
        with atomic_dir(ckpt_dir / name) as tmp:
            torch.save(state, tmp / STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(ckpt_dir / name)))
        for old in sorted(ckpt_dir.glob("epoch_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


# ----------------------------------------------------------------------------- running (driver)
def fit(params: Params, p: Plan) -> dict[str, Any]:
    """Run the loop through TorchTrainer; returns rank 0's outcome (history, best weights)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = params.train
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    started = False
    if tc.num_workers > 0 and not ray.is_initialized():
        ray.init(num_cpus=None if os.environ.get("RAY_ADDRESS") else max(tc.num_workers, os.cpu_count() or 1),
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        started = True
    ckpt_dir = Path(p.config["ckpt_dir"])
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=p.config,
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu),
        run_config=RunConfig(name=p.run_name, storage_path=str(ckpt_dir.parent),
                             checkpoint_config=CheckpointConfig(num_to_keep=tc.checkpoints_to_keep),
                             failure_config=FailureConfig(max_failures=tc.max_failures)),
    )
    try:
        result = trainer.fit()
    except TrainingInterrupted:
        raise
    except Exception as e:
        if "TrainingInterrupted" in str(e):
            raise TrainingInterrupted(f"train.stop_after_epochs={tc.stop_after_epochs}: stopped; run again "
                                      f"to resume from {ckpt_dir}") from None
        raise
    finally:
        if started:
            ray.shutdown()
    outcome = result.return_value
    if not outcome or outcome.get("best_state") is None:
        raise TrainingError(f"{ckpt_dir}: training returned no model (no epoch completed)")
    return outcome


def plot_curves(history: list[dict[str, float]], best_epoch: int, path: str | Path) -> Path:
    """Loss and UAR per epoch, best (validation) epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(ep, [h["train_acc"] for h in history], label="train accuracy (augmented crops)")
    b.plot(ep, [h["val_uar"] for h in history], label="validation UAR")
    b.set(xlabel="epoch", ylabel="score", title="accuracy / UAR", ylim=(0, 1))
    for ax in (a, b):
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def train(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path,
          pretrained: str | Path | None = None, synthetic: str | Path | None = None) -> TrainResult:
    """Train one recognizer on the manifest's train split (best epoch by validation UAR).

    Writes `<out>/model/` (model folder), `<out>/curves.png`, `<out>/summary.json`, checkpoints under
    `<out>/checkpoints/<run>/`, and one MLflow run with params, per-epoch metrics, lineage tags,
    the plots, the model folder and the pyfunc model.
    """
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = plan(params, manifest, features_dir, out, pretrained, synthetic)
    lineage = {k: str(v) for k, v in p.meta["lineage"].items()}
    resume_file = Path(p.config["ckpt_dir"]) / "mlflow_run_id"
    with tracking.start_run(params, p.run_name, tags={"stage": "train", **lineage}, resume_file=resume_file) as run:
        p.config["mlflow"] = tracking.run_info(run)
        outcome = fit(params, p)
        model = build_model(p.meta["arch"], p.meta["arch_config"], p.meta["input_dim"], len(p.meta["classes"]))
        model.load_state_dict({k: torch.tensor(v) for k, v in outcome["best_state"].items()})
        hist = outcome["history"]
        best = outcome["best_epoch"]
        meta = dict(p.meta)
        meta["train"] = {**meta["train"], "best_epoch": best, "val_uar": outcome["best_uar"],
                         "epochs_run": len(hist), "stopped_early": outcome["stopped_early"],
                         "params": params.train.model_dump(mode="json")}
        meta["mlflow"] = tracking.run_info(run)
        model_dir = save_model_dir(out / "model", model, meta)
        curves = plot_curves(hist, best, out / "curves.png")
        summary = {"model_dir": str(model_dir), "run_name": p.run_name, "mlflow_run_id": run.info.run_id,
                   "classes": meta["classes"], "best_epoch": best, "val_uar": round(outcome["best_uar"], 4),
                   "val_wa": round(hist[best]["val_wa"], 4) if 0 <= best < len(hist) else None,
                   "epochs_run": len(hist), "stopped_early": outcome["stopped_early"],
                   **{k: meta["train"][k] for k in ("n_train", "n_val", "n_synthetic")},
                   "device": outcome["device"], "world_size": outcome["world_size"]}
        atomic_write_json(out / "summary.json", summary)
        tracking.log_training(run, p.meta["classes"], summary, curves, model_dir, params.tracking.log_model)
    return TrainResult(model_dir=model_dir, summary=summary)


# ----------------------------------------------------------------------------- k-fold
FOLD_METRICS = ("uar", "wa", "macro_f1")


def train_folds(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Speaker-independent k-fold: each fold of speakers is the test set once (validation speakers
    re-carved from the rest with `assign_splits`); reports mean ± std (sample, ddof=1) over folds
    and the metrics of all folds' predictions pooled. Writes `<out>/fold_<k>/{train,evaluate}/`,
    `<out>/summary.json`, `<out>/report.md`, `<out>/confusion.png`."""
    from affectflow.contracts.manifest import write_manifest
    from affectflow.contracts.splits import assign_splits, check_no_leakage
    from affectflow.stages.evaluate import evaluate as run_evaluate
    from affectflow.stages.evaluate import plot_confusion, score_predictions
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = read_manifest(manifest)
    n_folds = int(df["fold"].max()) + 1
    if n_folds < 2:
        raise TrainingError(f"{manifest}: field 'fold' has {n_folds} value(s); k-fold needs splits.n_folds >= 2")
    rows: list[dict[str, Any]] = []
    preds: list[pd.DataFrame] = []
    lineage = tracking.lineage(params, df, manifest, features_dir)
    fold_params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"log_model": False})})
    with tracking.start_run(params, f"kfold-{params.train.model}", tags={"stage": "train_folds", **lineage}):
        import mlflow

        for k in range(n_folds):
            fdf = df.copy()
            fdf["split"] = assign_splits(fdf, k, params.splits.val_fraction, params.splits.seed)
            check_no_leakage(fdf)
            fold_dir = out / f"fold_{k}"
            fold_manifest = fold_dir / "manifest.parquet"
            fold_manifest.parent.mkdir(parents=True, exist_ok=True)
            write_manifest(fdf, fold_manifest)
            tr = train(fold_params, fold_manifest, features_dir, fold_dir / "train")
            mlflow.MlflowClient().set_tag(tr.summary["mlflow_run_id"], "fold", str(k))
            m = run_evaluate(fold_params, tr.model_dir, fold_manifest, features_dir, fold_dir / "evaluate")
            rows.append({"fold": k, **{n: m[n] for n in FOLD_METRICS},
                         **{f"{n}_ci": [m["test"][f"{n}_ci_low"], m["test"][f"{n}_ci_high"]] for n in FOLD_METRICS},
                         "val_uar": tr.summary["val_uar"], "best_epoch": tr.summary["best_epoch"],
                         "test_speakers": sorted(set(fdf.loc[fdf["split"] == "test", "speaker"])),
                         "n_test": m["test"]["n"]})
            mlflow.log_metrics({f"fold_{n}": m[n] for n in FOLD_METRICS}, step=k)
            preds.append(pd.read_parquet(fold_dir / "evaluate" / "predictions.parquet").query("set == 'test'"))
        table = pd.DataFrame(rows)
        classes = list(json.loads((out / "fold_0" / "train" / "model" / "model.json").read_text())["classes"])
        pooled_pred = pd.concat(preds, ignore_index=True)
        pooled = score_predictions(pooled_pred, classes, params)
        summary = {
            "folds": rows, "n_folds": n_folds, "model": params.train.model,
            "mean": {n: round(float(table[n].mean()), 4) for n in FOLD_METRICS},
            "std": {n: round(float(table[n].std(ddof=1)), 4) for n in FOLD_METRICS},
            "min": {n: round(float(table[n].min()), 4) for n in FOLD_METRICS},
            "max": {n: round(float(table[n].max()), 4) for n in FOLD_METRICS},
            "pooled": {n: pooled[n] for n in ("uar", "uar_ci_low", "uar_ci_high", "wa", "macro_f1", "n")},
            "pooled_per_class_recall": pooled["per_class_recall"],
        }
        plot_confusion(np.asarray(pooled["confusion"]), classes,
                       f"{n_folds}-fold pooled UAR {pooled['uar']:.3f}", out / "confusion.png")
        atomic_write_json(out / "summary.json", summary)
        atomic_write_text(out / "report.md", _folds_report(summary))
        mlflow.log_metrics({f"mean_{n}": summary["mean"][n] for n in FOLD_METRICS}
                           | {f"std_{n}": summary["std"][n] for n in FOLD_METRICS}
                           | {"pooled_uar": pooled["uar"]})
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(out / "report.md"))
        mlflow.log_artifact(str(out / "confusion.png"), artifact_path="plots")
    return summary


def _folds_report(s: dict[str, Any]) -> str:
    lines = [f"# {s['n_folds']}-fold speaker-independent evaluation ({s['model']})", "",
             "| fold | test speakers | UAR | WA | macro-F1 | val UAR | best epoch |", "|---|---|---|---|---|---|---|"]
    for r in s["folds"]:
        spk = ", ".join(x.split("/", 1)[-1] for x in r["test_speakers"])
        lines.append(f"| {r['fold']} | {spk} | {r['uar']:.3f} | {r['wa']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['val_uar']:.3f} | {r['best_epoch']} |")
    m, d = s["mean"], s["std"]
    lines += [f"| **mean ± std** | | **{m['uar']:.3f} ± {d['uar']:.3f}** | {m['wa']:.3f} ± {d['wa']:.3f} | "
              f"{m['macro_f1']:.3f} ± {d['macro_f1']:.3f} | | |", "",
              f"Pooled over folds: UAR {s['pooled']['uar']:.3f} [{s['pooled']['uar_ci_low']:.3f}, "
              f"{s['pooled']['uar_ci_high']:.3f}], WA {s['pooled']['wa']:.3f}, n = {s['pooled']['n']}.", "",
              "![pooled confusion](confusion.png)", ""]
    return "\n".join(lines)
