"""Recognizer architectures by name (`train.model` in params.yaml): the one registration point.

A model folder stores the architecture name, its configuration section and the input size, so
`build_model(meta.arch, meta.arch_config, meta.input_dim, len(meta.classes))` rebuilds exactly the
module whose `state_dict` is in `model.pt`. Every recognizer is `encoder` (input -> (B, D)
embedding) + `head` (D -> classes), called as `model(x, lengths)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from torch import nn

from affectflow.config import CnnConfig, MlpConfig, SslHeadConfig, SslLinearConfig, TrainConfig
from affectflow.models.recognizer import CnnBiGru, EgemapsMlp
from affectflow.models.ssl import SslHead, SslHeadArch
from affectflow.models.ssl_linear import SslLinear, SslLinearArch


@dataclass(frozen=True)
class ModelSpec:
    cls: type[nn.Module]
    """Built as `cls(input_dim, n_classes, arch)`."""
    feature: str
    """Feature kind (store) it reads."""
    section: str
    """The `train.<section>` holding its configuration."""
    config: type[BaseModel]
    """The settings class of `train.<section>`."""
    arch: type[BaseModel] | None = None
    """What it is built with (and its model folder stores), when more than `config`: the settings
    plus `feature_facts`. None: `config` itself."""
    feature_facts: tuple[str, ...] = ()
    """Fields of `arch` set from its feature kind's settings, not by the user (the kind's
    `FeatureKind.facts`: `ssl_head`'s `n_layers`, the encoder layers in each input vector)."""

    @property
    def built_with(self) -> type[BaseModel]:
        return self.arch or self.config


ARCHS: dict[str, ModelSpec] = {
    "cnn_bigru": ModelSpec(CnnBiGru, "logmel", "cnn", CnnConfig),
    "egemaps_mlp": ModelSpec(EgemapsMlp, "egemaps", "mlp", MlpConfig),
    "compare_mlp": ModelSpec(EgemapsMlp, "compare", "mlp", MlpConfig),
    "ssl_head": ModelSpec(SslHead, "ssl", "ssl_head", SslHeadConfig, SslHeadArch, feature_facts=("n_layers",)),
    "ssl_linear": ModelSpec(SslLinear, "ssl", "ssl_linear", SslLinearConfig, SslLinearArch,  # closed form: stages/train/linear.py
                            feature_facts=("n_layers", "states", "encoder_states")),
}


def spec(arch: str) -> ModelSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown model architecture '{arch}' (known: {sorted(ARCHS)})") from None


def feature_kind(arch: str) -> str:
    """The feature kind (feature store) an architecture reads."""
    return spec(arch).feature


def arch_config(train: TrainConfig, facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The configuration the chosen architecture is built with: its `train.<section>`, plus the
    `feature_facts` it takes from `facts` (its feature kind's, `FeatureKind.facts`); a model that
    needs a fact it is not given is an error naming it."""
    s = spec(train.model)
    cfg = getattr(train, s.section).model_dump(mode="json")
    for name in s.feature_facts:
        if facts is None or name not in facts:
            raise ValueError(f"train.model {train.model}: its '{name}' comes from its features ({s.feature}), "
                             "which were not given")
        cfg[name] = facts[name]
    return cfg


def build_model(arch: str, config: dict[str, Any], input_dim: int, n_classes: int) -> nn.Module:
    """A fresh recognizer; `input_dim` is n_mels (log-mel) or the functional count (eGeMAPS)."""
    s = spec(arch)
    return s.cls(input_dim, n_classes, s.built_with.model_validate(config))


__all__ = ["ARCHS", "CnnBiGru", "EgemapsMlp", "ModelSpec", "arch_config", "build_model", "feature_kind"]
