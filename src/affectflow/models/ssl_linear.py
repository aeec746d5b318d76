"""The linear recognizer over ONE layer of a frozen speech encoder (`train.model: ssl_linear`).

Input: the `ssl` kind's vector (`n_layers` time-averaged hidden states laid end to end). The encoder
half picks one layer (no parameters); the head is a linear layer whose weights are a multinomial
logistic regression fitted in closed form by training (`stages/train/linear.py`), so softmax of the
logits is the regression's probabilities and predict, the pyfunc, KServe, evaluate and the
deployment statistics run it like any other recognizer. Why one layer and a linear head: on corpora
nobody trained on, Whisper's middle layer with a logistic regression transfers better than a
learned layer weighting with an MLP (benchmarks/RESULTS.md, "Whisper front-end").
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from affectflow.config import SslLinearConfig


def hidden_state(layer: int | str, encoder_states: int) -> int:
    """The encoder's hidden state `layer` names (negative: from the encoder's end; `middle`:
    encoder_states // 2), as 0..encoder_states-1; an error naming the setting."""
    if layer == "middle":
        return encoder_states // 2
    if not isinstance(layer, int):
        raise ValueError(f"train.ssl_linear.layer: {layer!r} is not a hidden-state index here")
    if not -encoder_states <= layer < encoder_states:
        raise ValueError(f"train.ssl_linear.layer: {layer} is outside the encoder's {encoder_states} hidden states")
    return layer % encoder_states


def layer_index(layer: int | str, n_layers: int, states: list[int] | None = None, encoder_states: int = 0) -> int:
    """Where hidden state `layer` (an index of the ENCODER's states, or `middle`) lies in a vector of
    `n_layers` stored states: `states` are the encoder's indices of those (`features.ssl.layers`;
    empty: every state, 0..n_layers-1) out of `encoder_states` (0: n_layers). So `middle` is
    Whisper-base's hidden state 3 whether the features keep all 7 states or only 0..3; a state the
    features do not keep is an error naming both settings."""
    kept = list(states or range(n_layers))
    state = hidden_state(layer, encoder_states or n_layers)
    if state not in kept:
        raise ValueError(f"train.ssl_linear.layer: hidden state {state} ({layer!r}) is not kept by "
                         f"features.ssl.layers ({kept})")
    return kept.index(state)


class SslLinearArch(SslLinearConfig):
    """What an `ssl_linear` is built with (and its model folder's `arch_config` holds): the user's
    `train.ssl_linear` plus the encoder layers in each input vector, which the `ssl` kind's settings
    set (`ModelSpec.feature_facts`). Training replaces `layer: auto` by the index it chose."""

    n_layers: int = Field(ge=1)
    states: list[int] = Field(default_factory=list)
    """The encoder's hidden-state index of each stored layer (`features.ssl.layers` resolved);
    empty: every state, 0..n_layers-1 (model folders written before the encoder stopped early)."""
    encoder_states: int = Field(0, ge=0)
    """The encoder's hidden states (its layers + 1); 0: n_layers."""


class LayerSelect(nn.Module):
    """(B, n_layers * D) -> (B, D): one layer's time-averaged hidden state."""

    def __init__(self, in_dim: int, cfg: SslLinearArch):
        super().__init__()
        if in_dim % cfg.n_layers:
            raise ValueError(f"ssl_linear: input size {in_dim} is not n_layers ({cfg.n_layers}) x hidden size")
        if cfg.layer == "auto":
            raise ValueError("ssl_linear: layer 'auto' is chosen by training (the model folder stores the index); "
                             "build the network from a model folder's arch_config")
        self.n_layers, self.dim = cfg.n_layers, in_dim // cfg.n_layers
        self.layer = layer_index(cfg.layer, cfg.n_layers, cfg.states, cfg.encoder_states)  # position in the vector

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return x.view(x.shape[0], self.n_layers, self.dim)[:, self.layer]


class SslLinear(nn.Module):
    feature = "ssl"

    def __init__(self, in_dim: int, n_classes: int, cfg: SslLinearArch):
        super().__init__()
        self.encoder = LayerSelect(in_dim, cfg)
        self.head = nn.Linear(self.encoder.dim, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, lengths))

    @torch.no_grad()
    def set_head(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Load a fitted logistic regression (scikit-learn's `coef_`, `intercept_`). Two classes:
        scikit-learn keeps one row w (p = sigmoid(w.x + b)); the head gets -w/2 and +w/2, whose
        softmax is that sigmoid."""
        coef, intercept = np.asarray(coef, np.float32), np.asarray(intercept, np.float32)
        if coef.shape[0] == 1 and self.head.out_features == 2:
            coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
        if coef.shape != tuple(self.head.weight.shape):
            raise ValueError(f"ssl_linear: coefficients {coef.shape} do not fit the head {tuple(self.head.weight.shape)}")
        self.head.weight.copy_(torch.from_numpy(coef))
        self.head.bias.copy_(torch.from_numpy(intercept))
