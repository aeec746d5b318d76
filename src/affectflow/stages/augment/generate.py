"""Train the configured generator on standardised real training samples and draw labelled samples.

Both generators expose the same two calls — `sample(labels, seed)` and `realness(X, labels)` — so
the filter and the report do not care which one made the data. With `augment.style: speaker` the
WGAN-GP also takes a style code per sample (`styles=`), and generation draws new codes between
training speakers (`StyleSpace.mix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from affectflow.config import AugmentConfig
from affectflow.models.wgan import TrainHistory
from affectflow.stages.augment.style import StyleSpace


class TrainedGenerator(Protocol):
    history: TrainHistory

    def sample(self, labels: np.ndarray, seed: int, styles: np.ndarray | None = None) -> np.ndarray: ...

    def realness(self, X: np.ndarray, labels: np.ndarray, styles: np.ndarray | None = None) -> np.ndarray: ...


def train_generator(
    cfg: AugmentConfig, X_std: np.ndarray, y: np.ndarray, n_classes: int, device: torch.device,
    styles: np.ndarray | None = None,
) -> TrainedGenerator:
    """Fit `cfg.generator` on standardised X (and each row's style code, when style-conditioned)."""
    if cfg.generator == "wgan_gp":
        from affectflow.models.wgan import train_wgan

        return train_wgan(X_std, y, n_classes, cfg, device, styles=styles)
    if styles is not None:
        raise ValueError(f"augment.style: generator {cfg.generator} is not style-conditioned")
    from affectflow.models.aaec import train_aaec

    return train_aaec(X_std, y, n_classes, cfg, device)


@dataclass
class Generated:
    X_std: np.ndarray
    y: np.ndarray
    style: np.ndarray | None = None
    """(n, style_dim) code each sample was generated with (None: not style-conditioned)."""


def generate(
    model: TrainedGenerator, present_classes: np.ndarray, per_class: int, seed: int,
    style: StyleSpace | None = None,
) -> Generated:
    """`per_class` samples for each class that has real training data (others cannot be learned);
    with a `style` space, each with a new code mixed between two training speakers."""
    labels = np.repeat(np.asarray(present_classes, dtype=np.int64), per_class)
    if style is None:
        return Generated(model.sample(labels, seed), labels)
    codes = style.mix(len(labels), np.random.default_rng([seed, 23]))
    return Generated(model.sample(labels, seed, styles=codes), labels, codes)
