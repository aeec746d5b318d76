"""Recognizer architectures by name (`train.model` in params.yaml) and how to rebuild one.

A model folder stores the architecture name, its configuration section and the input size, so
`build_model(meta["arch"], meta["arch_config"], meta["input_dim"], len(meta["classes"]))`
rebuilds exactly the module whose `state_dict` is in `model.pt`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from affectflow.config import CnnConfig, MlpConfig, TrainConfig
from affectflow.models.recognizer import CnnBiGru, EgemapsMlp

ARCHS: dict[str, tuple[type[nn.Module], str]] = {
    "cnn_bigru": (CnnBiGru, "logmel"),
    "egemaps_mlp": (EgemapsMlp, "egemaps"),
}


def feature_kind(arch: str) -> str:
    """The feature kind (features store) an architecture reads."""
    try:
        return ARCHS[arch][1]
    except KeyError:
        raise ValueError(f"unknown model architecture '{arch}' (known: {sorted(ARCHS)})") from None


def arch_config(train: TrainConfig) -> dict[str, Any]:
    """The configuration section of `train` that shapes the chosen architecture."""
    section = train.cnn if train.model == "cnn_bigru" else train.mlp
    return section.model_dump(mode="json")


def build_model(arch: str, config: dict[str, Any], input_dim: int, n_classes: int) -> nn.Module:
    """A fresh recognizer; `input_dim` is n_mels (log-mel) or the functional count (eGeMAPS)."""
    feature_kind(arch)
    if arch == "cnn_bigru":
        return CnnBiGru(input_dim, n_classes, CnnConfig.model_validate(config))
    return EgemapsMlp(input_dim, n_classes, MlpConfig.model_validate(config))


__all__ = ["ARCHS", "CnnBiGru", "EgemapsMlp", "arch_config", "build_model", "feature_kind"]
