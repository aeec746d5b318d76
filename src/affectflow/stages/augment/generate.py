"""Train the configured generator on standardised real training samples and draw labelled samples.

Both generators expose the same two calls — `sample(labels, seed)` and `realness(X, labels)` — so
the filter and the report do not care which one made the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from affectflow.config import AugmentConfig
from affectflow.models.wgan import TrainHistory


class TrainedGenerator(Protocol):
    history: TrainHistory

    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray: ...

    def realness(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray: ...


def train_generator(
    cfg: AugmentConfig, X_std: np.ndarray, y: np.ndarray, n_classes: int, device: torch.device,
) -> TrainedGenerator:
    """Fit `cfg.generator` on standardised X."""
    if cfg.generator == "wgan_gp":
        from affectflow.models.wgan import train_wgan

        return train_wgan(X_std, y, n_classes, cfg, device)
    from affectflow.models.aaec import train_aaec

    return train_aaec(X_std, y, n_classes, cfg, device)


@dataclass
class Generated:
    X_std: np.ndarray
    y: np.ndarray


def generate(model: TrainedGenerator, present_classes: np.ndarray, per_class: int, seed: int) -> Generated:
    """`per_class` samples for each class that has real training data (others cannot be learned)."""
    labels = np.repeat(np.asarray(present_classes, dtype=np.int64), per_class)
    return Generated(model.sample(labels, seed), labels)
