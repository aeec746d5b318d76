"""Recognizer architectures by name (`train.model` in params.yaml): the one registration point.

A model folder stores the architecture name, its configuration section and the input size, so
`build_model(meta.arch, meta.arch_config, meta.input_dim, len(meta.classes))` rebuilds exactly the
module whose `state_dict` is in `model.pt`. Every recognizer is `encoder` (input -> (B, D)
embedding) + `head` (D -> classes), called as `model(x, lengths)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from torch import nn

from affectflow.config import CnnConfig, MlpConfig, SslHeadConfig, SslLinearConfig, TrainConfig
from affectflow.models.recognizer import CnnBiGru, EgemapsMlp
from affectflow.models.ssl import SslHead
from affectflow.models.ssl_linear import SslLinear


@dataclass(frozen=True)
class ModelSpec:
    cls: type[nn.Module]
    """Built as `cls(input_dim, n_classes, config)`."""
    feature: str
    """Feature kind (store) it reads."""
    section: str
    """The `train.<section>` holding its configuration."""
    config: type[BaseModel]


ARCHS: dict[str, ModelSpec] = {
    "cnn_bigru": ModelSpec(CnnBiGru, "logmel", "cnn", CnnConfig),
    "egemaps_mlp": ModelSpec(EgemapsMlp, "egemaps", "mlp", MlpConfig),
    "compare_mlp": ModelSpec(EgemapsMlp, "compare", "mlp", MlpConfig),
    "ssl_head": ModelSpec(SslHead, "ssl", "ssl_head", SslHeadConfig),
    "ssl_linear": ModelSpec(SslLinear, "ssl", "ssl_linear", SslLinearConfig),  # fitted in closed form (stages/train/linear.py)
}


def spec(arch: str) -> ModelSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown model architecture '{arch}' (known: {sorted(ARCHS)})") from None


def feature_kind(arch: str) -> str:
    """The feature kind (feature store) an architecture reads."""
    return spec(arch).feature


def arch_config(train: TrainConfig, n_layers: int | None = None) -> dict[str, Any]:
    """The configuration section of `train` that shapes the chosen architecture; `n_layers`: the
    encoder layers an `ssl_head` reads (known from the checkpoint, not from params)."""
    cfg = getattr(train, spec(train.model).section).model_dump(mode="json")
    if n_layers is not None and "n_layers" in cfg:
        cfg["n_layers"] = n_layers
    return cfg


def build_model(arch: str, config: dict[str, Any], input_dim: int, n_classes: int) -> nn.Module:
    """A fresh recognizer; `input_dim` is n_mels (log-mel) or the functional count (eGeMAPS)."""
    s = spec(arch)
    return s.cls(input_dim, n_classes, s.config.model_validate(config))


__all__ = ["ARCHS", "CnnBiGru", "EgemapsMlp", "ModelSpec", "arch_config", "build_model", "feature_kind"]
