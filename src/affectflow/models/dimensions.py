"""The dimensional head every recognizer can carry: arousal / valence (/ dominance) regressed from
the same encoder embedding the class head reads, trained jointly with it.

Every recognizer is `head(encoder(x))` (models/__init__), so one head serves every architecture:
`attach(model, n)` adds `model.dimension_head` (Linear D -> n, then tanh: targets live on
[-1, 1], `corpora.dimensions`), and `outputs(model, x, lengths)` runs the encoder once for both
heads. The loss is the concordance correlation coefficient's complement, 1 - CCC, per dimension
(rows without a target left out), averaged over dimensions; CCC rewards getting both the ordering
and the scale right, which is how dimensional emotion is scored (e.g. AVEC, MSP-Podcast).

Closed-form recognizers (`ssl_linear`, `stages/train/linear.py`) get the same head, its weights a
ridge regression onto artanh of the targets. The studies' SVM baseline has no dimensional output.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD = "dimension_head"
"""Attribute (and state_dict prefix) of the head."""
MIN_ROWS = 2
"""A dimension needs this many targets in a batch for a CCC (one row has no variance)."""


class DimensionHead(nn.Module):
    """(B, D) embedding -> (B, n) dimensions on [-1, 1]."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.linear = nn.Linear(dim, n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(z))


def attach(model: nn.Module, n: int) -> nn.Module:
    """`model` with a fresh dimensional head of `n` outputs on its encoder's embedding."""
    dim = getattr(model.encoder, "dim", None) or model.head.in_features
    setattr(model, HEAD, DimensionHead(int(dim), n))
    return model


def has_head(model: nn.Module) -> bool:
    return hasattr(model, HEAD)


def outputs(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(class logits, dimensions or None) with one encoder pass."""
    z = model.encoder(x, lengths)
    head = getattr(model, HEAD, None)
    return model.head(z), None if head is None else head(z)


class Joint(nn.Module):
    """Logits and dimensions side by side, (B, C + n): one forward for batched inference."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        logits, dims = outputs(self.model, x, lengths)
        return logits if dims is None else torch.cat([logits.float(), dims.float()], dim=1)


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lin's concordance correlation coefficient of two 1-D tensors:
    2 cov / (var_p + var_t + (mean_p - mean_t)^2) (population moments)."""
    mp, mt = pred.mean(), target.mean()
    vp, vt = pred.var(unbiased=False), target.var(unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean()
    return 2 * cov / (vp + vt + (mp - mt) ** 2).clamp_min(1e-8)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of 1 - CCC, each over the rows with a target (NaN: none); 0 (with a
    gradient path) when no dimension has `MIN_ROWS` targets in the batch."""
    losses = []
    for j in range(target.shape[1]):
        ok = ~torch.isnan(target[:, j])
        if int(ok.sum()) >= MIN_ROWS:
            losses.append(1.0 - ccc(pred[ok, j].float(), target[ok, j].float()))
    if not losses:
        return pred.sum() * 0.0
    return torch.stack(losses).mean()
