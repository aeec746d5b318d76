"""The recognizer over a frozen self-supervised speech encoder's layers (`train.model: ssl_head`).

Input: one vector per clip, the encoder's time-averaged hidden states of `n_layers` layers laid end
to end (`affectflow.features.ssl`). The encoder half learns one softmax weight per layer (which
layers carry emotion differs by model and corpus) and an MLP over the weighted sum; the head is a
linear layer, as in every recognizer, so DANN and latent augmentation work on it unchanged.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from affectflow.config import MlpConfig, SslHeadConfig
from affectflow.models.recognizer import MlpEncoder


class SslHeadArch(SslHeadConfig):
    """What an `ssl_head` is built with (and its model folder's `arch_config` holds): the user's
    `train.ssl_head` plus the encoder layers in each input vector, which the `ssl` kind's settings
    set (`ModelSpec.feature_facts`; the checkpoint's layer count, or `features.ssl.layers`)."""

    n_layers: int = Field(ge=1)


class LayerWeightedEncoder(nn.Module):
    """(B, n_layers * D) -> (B, hidden[-1]): softmax-weighted layer sum, then an MLP."""

    def __init__(self, in_dim: int, cfg: SslHeadArch):
        super().__init__()
        if in_dim % cfg.n_layers:
            raise ValueError(f"ssl_head: input size {in_dim} is not n_layers ({cfg.n_layers}) x hidden size")
        self.n_layers, self.width = cfg.n_layers, in_dim // cfg.n_layers
        self.layer_logits = nn.Parameter(torch.zeros(cfg.n_layers))
        self.mlp = MlpEncoder(self.width, MlpConfig(hidden=cfg.hidden, dropout=cfg.dropout))
        self.dim = self.mlp.dim

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, 0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        layers = x.view(x.shape[0], self.n_layers, self.width)
        return self.mlp((layers * self.layer_weights()[None, :, None]).sum(1))


class SslHead(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, cfg: SslHeadArch):
        super().__init__()
        self.encoder = LayerWeightedEncoder(in_dim, cfg)
        self.head = nn.Linear(self.encoder.dim, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, lengths))
