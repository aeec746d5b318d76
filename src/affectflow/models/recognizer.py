"""Emotion recognizers. Each is `encoder` (input -> (B, D) embedding) + `head` (Linear D -> C).

The split is the contract with DANN pretraining: it trains an encoder with a domain critic, and
the recognizer loads those encoder weights and fine-tunes them with a fresh head.

* `CnnBiGru` — log-mel (B, n_mels, T) -> three conv blocks (conv-BN-ReLU-pool) -> BiGRU ->
  attention pooling that ignores padded frames -> dropout. Variable-length batches carry
  `lengths` (frames); padding never reaches the GRU state (packed sequences) nor the pooling
  weights (masked softmax), so a clip gets the same embedding alone or in a padded batch.
* `EgemapsMlp` — standardised eGeMAPS functionals (B, 88) -> dense-BN-ReLU-dropout stack.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from affectflow.config import CnnConfig, MlpConfig


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class AttentionPool(nn.Module):
    """Additive attention over time: weights = softmax(v·tanh(W h)) over the unpadded steps."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = self.score(h).squeeze(-1)  # (B, T)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s.float(), dim=1).to(h.dtype)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, pool: int):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(pool),
        )


class CnnBiGruEncoder(nn.Module):
    """(B, n_mels, T) [+ lengths] -> (B, 2 * gru_hidden)."""

    def __init__(self, n_mels: int, cfg: CnnConfig):
        super().__init__()
        chans = [1, *cfg.channels]
        self.pool = cfg.pool
        self.convs = nn.Sequential(*(ConvBlock(a, b, cfg.pool) for a, b in itertools.pairwise(chans)))
        self.time_stride = cfg.pool ** len(cfg.channels)
        freq_out = n_mels
        for _ in cfg.channels:
            freq_out //= cfg.pool
        if freq_out < 1:
            raise ValueError(f"train.cnn: {len(cfg.channels)} pooling blocks leave no frequency bins of {n_mels} mels")
        self.gru = nn.GRU(cfg.channels[-1] * freq_out, cfg.gru_hidden, batch_first=True, bidirectional=True)
        self.attn = AttentionPool(2 * cfg.gru_hidden, cfg.attention_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.dim = 2 * cfg.gru_hidden
        self.min_frames = self.time_stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[-1]
        if t < self.min_frames:  # too short for the pooling stack: pad (the mask hides it)
            x = nn.functional.pad(x, (0, self.min_frames - t))
        z = x.unsqueeze(1)  # (B, 1, F, T)
        n = lengths
        for block in self.convs:
            z = block(z)
            if n is not None:  # zero the padded steps again: BN + ReLU made them non-zero
                n = n // self.pool
                z = z * frame_mask(n.to(z.device), z.shape[-1])[:, None, None, :].to(z.dtype)
        z = z.flatten(1, 2).transpose(1, 2)  # (B, T', C*F')
        steps = z.shape[1]
        if n is None:
            out, _ = self.gru(z)
            return self.drop(self.attn(out))
        n = n.clamp(1, steps)
        packed = pack_padded_sequence(z, n.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        return self.drop(self.attn(out, frame_mask(n.to(z.device), steps)))


class CnnBiGru(nn.Module):
    """CNN + BiGRU + attention pooling over log-mel spectrograms."""

    def __init__(self, n_mels: int, n_classes: int, cfg: CnnConfig):
        super().__init__()
        self.encoder = CnnBiGruEncoder(n_mels, cfg)
        self.head = nn.Linear(self.encoder.dim, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, lengths))


class MlpEncoder(nn.Module):
    """(B, d) -> (B, hidden[-1])."""

    def __init__(self, in_dim: int, cfg: MlpConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(cfg.input_dropout)] if cfg.input_dropout > 0 else []
        prev = in_dim
        for h in cfg.hidden:
            layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
            prev = h
        self.net = nn.Sequential(*layers)
        self.dim = prev

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class EgemapsMlp(nn.Module):
    """MLP over standardised eGeMAPS functionals."""

    def __init__(self, in_dim: int, n_classes: int, cfg: MlpConfig):
        super().__init__()
        self.encoder = MlpEncoder(in_dim, cfg)
        self.head = nn.Linear(self.encoder.dim, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, lengths))
