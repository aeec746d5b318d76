"""Domain-adversarial network (Ganin & Lempitsky, 2015) around a recognizer.

The recognizer's `encoder` is the shared feature extractor and its `head` the emotion classifier;
a domain head (and optionally a speaker head) reads the same embedding through a gradient-reversal
layer. The heads learn to tell corpora (speakers) apart while the reversed gradient pushes the
encoder towards embeddings in which they cannot, so the emotion head has to work on features the
corpora share. Because the recognizer module is kept whole, its `state_dict` is exactly what a
recognizer model folder stores and `train.train(pretrained=...)` fine-tunes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -λ."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float) -> torch.Tensor:
    return GradReverse.apply(x, lambd)  # type: ignore[no-any-return]


class GradientReversal(nn.Module):
    """The layer form; `lambd` is set by the training loop at every step (the λ schedule)."""

    def __init__(self, lambd: float = 0.0):
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


def grl_lambda(progress: float, lambda_max: float, gamma: float = 10.0) -> float:
    """λ(p) = λ_max · (2 / (1 + e^(−γp)) − 1): 0 at the start, so the untrained domain head cannot
    scramble the encoder, rising smoothly towards λ_max (p is clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def mlp_head(in_dim: int, hidden: Sequence[int], n_out: int, dropout: float) -> nn.Sequential:
    """Linear-ReLU-dropout stack ending in `n_out` logits (plain linear when `hidden` is empty)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        prev = h
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


@dataclass
class DannOutput:
    embedding: torch.Tensor
    emotion: torch.Tensor
    domain: torch.Tensor | None
    speaker: torch.Tensor | None


class Dann(nn.Module):
    """recognizer (encoder + emotion head) + domain head [+ speaker head], each behind a GRL."""

    def __init__(self, recognizer: nn.Module, n_domains: int, n_speakers: int = 0,
                 hidden: Sequence[int] = (128,), dropout: float = 0.2):
        super().__init__()
        if not hasattr(recognizer, "encoder") or not hasattr(recognizer, "head"):
            raise TypeError(f"{type(recognizer).__name__} has no .encoder/.head; DANN needs a recognizer module")
        dim = int(recognizer.encoder.dim)
        self.recognizer = recognizer
        self.grl = GradientReversal()
        self.domain_head = mlp_head(dim, hidden, n_domains, dropout) if n_domains >= 2 else None
        self.speaker_head = mlp_head(dim, hidden, n_speakers, dropout) if n_speakers >= 2 else None

    @property
    def encoder(self) -> nn.Module:
        return self.recognizer.encoder  # type: ignore[no-any-return]

    @property
    def head(self) -> nn.Module:
        return self.recognizer.head  # type: ignore[no-any-return]

    def set_lambda(self, lambd: float) -> None:
        self.grl.lambd = lambd

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> DannOutput:
        z = self.encoder(x, lengths)
        r = self.grl(z) if (self.domain_head is not None or self.speaker_head is not None) else z
        return DannOutput(
            embedding=z,
            emotion=self.head(z),
            domain=self.domain_head(r) if self.domain_head is not None else None,
            speaker=self.speaker_head(r) if self.speaker_head is not None else None,
        )
