"""Turning stored feature arrays into model inputs: normalisation, crops, padding, augmentation.

Training, evaluation, the pyfunc and DANN must feed a model exactly the same way, so the pieces
live here once. Normalisation statistics come from the training split only and travel in
`model.json`; frame-level features are padded into (B, F, T) batches with their true lengths,
which the models turn into masks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from affectflow.config import SpecAugmentConfig

EPS = 1e-5
"""Floor for standard deviations (a constant feature must not divide by zero)."""
MAX_TIME_MASK_FRACTION = 0.2
"""A time mask never covers more than this share of a clip (SpecAugment's upper bound p), so short
clips keep most of their frames."""


@dataclass
class NormStats:
    """How features are standardised: `global` (per-dimension mean/std of the training split) or
    `utterance` (each log-mel clip by its own per-bin mean/std over time)."""

    mode: str = "global"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> NormStats:
        return cls(mode=str(d["mode"]), mean=list(d.get("mean") or []), std=list(d.get("std") or []))  # type: ignore[call-overload]


def compute_stats(arrays: Sequence[np.ndarray], mode: str) -> NormStats:
    """Per-dimension statistics over every frame of every array (dimension = axis 0 of a frame
    matrix, the only axis of a vector); `utterance` mode stores none."""
    if mode == "utterance":
        return NormStats(mode="utterance")
    if not arrays:
        raise ValueError("cannot compute normalisation statistics from an empty training split")
    dim = arrays[0].shape[0]
    total = np.zeros(dim, np.float64)
    sq = np.zeros(dim, np.float64)
    n = 0
    for a in arrays:
        m = np.asarray(a, np.float64).reshape(dim, -1)
        total += m.sum(axis=1)
        sq += np.square(m).sum(axis=1)
        n += m.shape[1]
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return NormStats(mode="global", mean=mean.tolist(), std=np.maximum(std, EPS).tolist())


def normalize(x: np.ndarray, stats: NormStats) -> np.ndarray:
    """Standardise one array (F, T) or (F,) as float32."""
    x = np.asarray(x, np.float32)
    if stats.mode == "utterance":
        axis = -1 if x.ndim > 1 else None
        mu = x.mean(axis=axis, keepdims=True)
        sd = np.maximum(x.std(axis=axis, keepdims=True), EPS)
        return (x - mu) / sd
    mean = np.asarray(stats.mean, np.float32)
    std = np.asarray(stats.std, np.float32)
    if x.ndim > 1:
        mean, std = mean[:, None], std[:, None]
    return (x - mean) / std


def random_crop(x: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of `frames` along time (the whole clip when shorter)."""
    t = x.shape[-1]
    if t <= frames:
        return x
    start = int(rng.integers(0, t - frames + 1))
    return x[..., start : start + frames]


def collate(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack vectors (B, d), or zero-pad frame matrices to (B, F, T_max) with their lengths."""
    if arrays[0].ndim == 1:
        return torch.from_numpy(np.stack(arrays).astype(np.float32)), None
    lengths = np.array([a.shape[-1] for a in arrays], dtype=np.int64)
    out = np.zeros((len(arrays), arrays[0].shape[0], int(lengths.max())), np.float32)
    for i, a in enumerate(arrays):
        out[i, :, : a.shape[-1]] = a
    return torch.from_numpy(out), torch.from_numpy(lengths)


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of similar length (little padding) for whole-utterance inference."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def augment(x: torch.Tensor, lengths: torch.Tensor | None, cfg: SpecAugmentConfig,
            g: torch.Generator) -> torch.Tensor:
    """SpecAugment-style masks (mask value 0 = the normalised mean), mel-axis shift and noise.

    Works on (B, F, T) log-mel batches in place of a copy; vectors (B, d) only get noise. Draws come
    from `g` so a resumed run repeats them exactly.
    """
    x = x.clone()
    if x.ndim == 3:
        b, f, t = x.shape
        real_t = lengths if lengths is not None else torch.full((b,), t)
        if cfg.freq_shift > 0:
            shifts = torch.randint(-cfg.freq_shift, cfg.freq_shift + 1, (b,), generator=g)
            idx = (torch.arange(f)[None, :] - shifts[:, None]).clamp(0, f - 1)  # edge-padded shift
            x = torch.gather(x, 1, idx[:, :, None].expand(b, f, t).to(x.device))
        for _ in range(cfg.freq_masks):
            w = torch.randint(0, cfg.freq_width + 1, (b,), generator=g)
            s = (torch.rand(b, generator=g) * (f - w + 1).clamp(min=1)).long()
            bins = torch.arange(f)[None, :]
            m = (bins >= s[:, None]) & (bins < (s + w)[:, None])
            x = x.masked_fill(m[:, :, None].to(x.device), 0.0)
        for _ in range(cfg.time_masks):
            cap = (real_t.float() * MAX_TIME_MASK_FRACTION).long()
            w = torch.minimum(torch.randint(0, cfg.time_width + 1, (b,), generator=g), cap)
            s = (torch.rand(b, generator=g) * (real_t - w + 1).clamp(min=1)).long()
            steps = torch.arange(t)[None, :]
            m = (steps >= s[:, None]) & (steps < (s + w)[:, None])
            x = x.masked_fill(m[:, None, :].to(x.device), 0.0)
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=g).to(x.device)
        if x.ndim == 3 and lengths is not None:  # keep padding at zero
            pad = ~(torch.arange(x.shape[-1])[None, :] < lengths[:, None])
            x = x.masked_fill(pad[:, None, :].to(x.device), 0.0)
    return x
