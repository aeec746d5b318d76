"""The DANN training loop (one process, CUDA when present).

Every step takes a batch of labelled source clips and as many unlabelled target clips (drawn with
each target corpus equally likely). Loss = emotion cross-entropy on the source part (class-balanced)
+ `domain_weight` · domain cross-entropy on both parts (balanced over the domains in the batch)
[+ `speaker_weight` · speaker cross-entropy]; the domain and speaker heads sit behind a gradient-
reversal layer whose λ follows `grl_lambda` over the steps. With `adversarial=False` the same loop
trains the encoder on the source alone (no target clip is read): the "before adaptation" reference
and the source-only rows of the ablation, so the two differ only in the adversarial term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from affectflow.config import PretrainConfig, TrainConfig
from affectflow.metrics import confusion, uar_cm
from affectflow.models.dann import Dann, grl_lambda
from affectflow.models.data import augment, collate, random_crop
from affectflow.runtime.device import autocast
from affectflow.runtime.progress import progress


@dataclass
class LoopData:
    """Normalised arrays with their labels; target labels are domains and speakers only."""

    src_x: list[np.ndarray]
    src_y: np.ndarray
    src_domain: np.ndarray
    src_speaker: np.ndarray
    tgt_x: list[np.ndarray]
    tgt_domain: np.ndarray
    tgt_speaker: np.ndarray
    val_x: list[np.ndarray]
    val_y: np.ndarray
    val_speaker: np.ndarray | None = None
    """Each validation clip's speaker (DEV's bootstrap resamples speakers; None: clips)."""


def _balanced_ce(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy in which every class present in the batch weighs the same in total."""
    counts = torch.bincount(y, minlength=logits.shape[1]).float()
    w = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return nn.functional.cross_entropy(logits.float(), y, weight=w * (len(y) / max(int((counts > 0).sum()), 1)),
                                       label_smoothing=smoothing)


def _target_sampler(domains: np.ndarray) -> np.ndarray:
    """Sampling probabilities: every target corpus equally likely, clips uniform within one."""
    _, inv, counts = np.unique(domains, return_inverse=True, return_counts=True)
    p = 1.0 / counts[inv]
    return p / p.sum()


def _batch(xs: list[np.ndarray], idx: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    return collate([random_crop(xs[j], crop, rng) if xs[j].ndim > 1 else xs[j] for j in idx])


def _pad_cat(a: torch.Tensor, la: torch.Tensor | None, b: torch.Tensor,
             lb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate two collated batches (frame matrices padded to the longer one)."""
    if a.ndim == 2:
        return torch.cat([a, b]), None
    t = max(a.shape[-1], b.shape[-1])
    a = nn.functional.pad(a, (0, t - a.shape[-1]))
    b = nn.functional.pad(b, (0, t - b.shape[-1]))
    assert la is not None and lb is not None
    return torch.cat([a, b]), torch.cat([la, lb])


@torch.inference_mode()
def embed(module: nn.Module, arrays: list[np.ndarray], device: torch.device, batch_size: int) -> np.ndarray:
    """(n, K) outputs of `module` (encoder: embeddings; recognizer: logits) in input order."""
    from affectflow.serving.recognizer import predict_logits

    if not arrays:
        return np.zeros((0, 0), np.float32)
    return predict_logits(module, arrays, device, batch_size).numpy()


def source_val_uar(model: Dann, data: LoopData, device: torch.device, batch_size: int) -> float:
    if not data.val_x:
        return float("nan")
    pred = embed(model.recognizer, data.val_x, device, batch_size).argmax(1)
    return uar_cm(confusion(data.val_y, pred, int(model.head.out_features)))


def _mixed_batch(data: LoopData, idx: np.ndarray, tc: TrainConfig, rng: np.random.Generator, gen: torch.Generator,
                 p_tgt: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]:
    """Source rows `idx` (cropped, augmented) plus as many target rows drawn with `p_tgt` (None: no
    target): (x, lengths, emotion labels of the source part, domain labels, speaker labels)."""
    xs, ls = _batch(data.src_x, idx, tc.crop_frames, rng)
    xs = augment(xs, ls, tc.specaugment, gen)
    ys = torch.from_numpy(data.src_y[idx])
    dom = torch.from_numpy(data.src_domain[idx])
    spk = torch.from_numpy(data.src_speaker[idx])
    if p_tgt is None:
        return xs, ls, ys, dom, spk
    tidx = rng.choice(len(data.tgt_x), size=len(idx), replace=True, p=p_tgt)
    xt, lt = _batch(data.tgt_x, tidx, tc.crop_frames, rng)
    xt = augment(xt, lt, tc.specaugment, gen)
    x, lens = _pad_cat(xs, ls, xt, lt)
    return (x, lens, ys, torch.cat([dom, torch.from_numpy(data.tgt_domain[tidx])]),
            torch.cat([spk, torch.from_numpy(data.tgt_speaker[tidx])]))


def _losses(out: Any, n_src: int, ys: torch.Tensor, dom: torch.Tensor, spk: torch.Tensor,
            emo_loss: nn.Module, cfg: PretrainConfig, use_target: bool,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, emotion, domain, speaker) losses of one batch."""
    loss_e = emo_loss(out.emotion[:n_src].float(), ys)
    loss = loss_e
    loss_d = loss_s = torch.zeros((), device=device)
    if use_target and out.domain is not None:
        loss_d = _balanced_ce(out.domain, dom.to(device), cfg.domain_label_smoothing)
        loss = loss + cfg.domain_weight * loss_d
    if use_target and out.speaker is not None:
        loss_s = nn.functional.cross_entropy(out.speaker.float(), spk.to(device))
        loss = loss + cfg.speaker_weight * loss_s
    return loss, loss_e, loss_d, loss_s


def train_dann(model: Dann, data: LoopData, cfg: PretrainConfig, tc: TrainConfig, device: torch.device,
               adversarial: bool, seed: int, desc: str = "dann",
               on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train in place for `cfg.epochs`; returns one history row per epoch. The model of the last
    epoch is kept: target labels are unknown, so no checkpoint can be chosen for the target, and
    source-validation UAR would favour the early, barely adapted epochs."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    adversaries = [p for h in (model.domain_head, model.speaker_head) if h is not None for p in h.parameters()]
    ids = {id(p) for p in adversaries}
    opt = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) not in ids], "lr": cfg.lr},
        {"params": adversaries, "lr": cfg.lr * cfg.adversary_lr_scale},
    ], lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_src = len(data.src_y)
    steps_per_epoch = max(1, math.ceil(n_src / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    n_classes = int(model.head.out_features)
    present = np.unique(data.src_y)
    w = np.zeros(n_classes, np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=data.src_y)
    emo_loss = nn.CrossEntropyLoss(weight=torch.from_numpy(w).to(device))
    use_target = adversarial and len(data.tgt_x) > 0 and model.domain_head is not None
    p_tgt = _target_sampler(data.tgt_domain) if use_target else None
    amp = autocast(device, cfg.mixed_precision)
    history: list[dict[str, float]] = []
    step = 0
    for epoch in progress(range(cfg.epochs), desc, total=cfg.epochs, unit="epoch"):
        model.train()
        sums = {"loss_emotion": 0.0, "loss_domain": 0.0, "loss_speaker": 0.0, "domain_acc": 0.0, "train_acc": 0.0}
        batches = 0
        lam = 0.0
        order = rng.permutation(n_src)
        for i in range(0, n_src, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            lam = grl_lambda(step / max(total - 1, 1), cfg.lambda_max, cfg.lambda_gamma) if adversarial else 0.0
            model.set_lambda(lam)
            x, lens, ys, dom, spk = _mixed_batch(data, idx, tc, rng, gen, p_tgt if use_target else None)
            ys = ys.to(device)
            with amp:
                out = model(x.to(device), None if lens is None else lens.to(device))
                loss, loss_e, loss_d, loss_s = _losses(out, len(idx), ys, dom, spk, emo_loss, cfg, use_target, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            batches += 1
            sums["loss_emotion"] += float(loss_e.detach())
            sums["loss_domain"] += float(loss_d.detach())
            sums["loss_speaker"] += float(loss_s.detach())
            sums["train_acc"] += float((out.emotion[: len(idx)].argmax(1) == ys).float().mean())
            if use_target and out.domain is not None:
                sums["domain_acc"] += float((out.domain.argmax(1).cpu() == dom).float().mean())
        row = {k: v / max(batches, 1) for k, v in sums.items()}
        row.update(epoch=epoch, **{"lambda": lam}, lr=float(sched.get_last_lr()[0]),
                   source_val_uar=source_val_uar(model, data, device, cfg.batch_size))
        if not use_target:
            row.pop("loss_domain"), row.pop("loss_speaker"), row.pop("domain_acc")
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, {k: v for k, v in row.items() if k != "epoch" and not math.isnan(v)})
    model.eval()
    return history
