"""Whether to adapt, and how strongly, without target labels: deep embedded validation
(`affectflow.models.dev`) over the stage's candidates (no adaptation = the source-only model,
λ = 0; each DANN strength), on the source validation speakers weighted by how target-like each clip
looks in the candidate's own embedding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from affectflow.models.dev import Choice, confident, importance_weights
from affectflow.stages.pretrain.loop import LoopData, embed


class SelectionError(ValueError):
    """DEV cannot run on these inputs; the message names the setting."""


def candidate_terms(model: Any, data: LoopData, device: torch.device, batch_size: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-clip losses, importance weights) of one trained DANN (or source-only) model on the source
    validation clips: what its R_DEV is computed from (`models.dev.dev_risk`)."""
    if not data.val_x:
        raise SelectionError("pretrain.select: dev needs labelled source validation speakers "
                             "(splits.val_fraction > 0)")
    src = embed(model.encoder, data.src_x, device, batch_size)
    tgt = embed(model.encoder, data.tgt_x, device, batch_size)
    val = embed(model.encoder, data.val_x, device, batch_size)
    weights = importance_weights(src, tgt, val, seed)
    logits = torch.from_numpy(embed(model.recognizer, data.val_x, device, batch_size))
    losses = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(data.val_y)), reduction="none")
    return losses.numpy(), weights


def select(models: Mapping[float, Any], data: LoopData, device: torch.device, batch_size: int, seed: int,
           margin: float, confidence: float = 0.0) -> Choice:
    """The DEV choice among `models` (λ -> trained model; 0.0 must be the source-only one), a DANN
    kept only when the speaker bootstrap is `confidence` sure of it (`models.dev.confident`)."""
    terms = {lam: candidate_terms(m, data, device, batch_size, seed) for lam, m in models.items()}
    groups = data.val_speaker if data.val_speaker is not None else np.arange(len(data.val_y))
    return confident(terms, groups, margin, confidence, seed)


def select_for_stage(inp: Any, models: dict[str, Any], device: torch.device, fit: Any) -> tuple[Choice, Any]:
    """The stage's `pretrain.select: dev`: the source-only model (λ = 0; trained here when
    `compare_source_only` is off) and a DANN per `select_lambdas` (the stage's own DANN counts for
    `lambda_max`), scored by DEV; (the choice, the chosen model)."""
    from dataclasses import replace

    cfg = inp.params.pretrain
    if "source-only" not in models:
        models["source-only"] = fit(inp, device, adversarial=False, seed=cfg.seed, desc="source-only")[0]
    candidates: dict[float, Any] = {0.0: models["source-only"], float(cfg.lambda_max): models["DANN"]}
    for lam in cfg.select_lambdas:
        if float(lam) not in candidates:
            at = replace(inp, params=inp.params.model_copy(update={"pretrain": cfg.model_copy(update={"lambda_max": lam})}))
            candidates[float(lam)] = fit(at, device, adversarial=True, seed=cfg.seed, desc=f"dann-{lam:g}")[0]
    choice = select(candidates, inp.data, device, inp.params.train.batch_size, cfg.seed, cfg.select_margin,
                    cfg.select_confidence)
    return choice, candidates[choice.lambd]
