"""Typed configuration: `params.yaml` is the one source of hyper-parameters.

Every stage section is a pydantic model with `extra="forbid"`, so an unknown key or a wrong type is
an error that names the key (e.g. ``train.lr: Input should be a valid number``). CLI flags and
pipeline parameters override values through dotted keys (``train.epochs=3``) via `apply_overrides`.

The settings live in one module per section group (`data`, `features`, `training`, `augment`,
`platform`, `serving`, `studies`), `Params` in `params`, reading and writing in `loader`; every
public name is importable from `affectflow.config`.
"""

from __future__ import annotations

from affectflow.config.augment import AugmentConfig, LatentConfig, PretrainConfig
from affectflow.config.base import ConfigError, Section
from affectflow.config.data import (
    AudioConfig,
    CorpusSpec,
    IngestConfig,
    PathsConfig,
    SplitsConfig,
    ValidationConfig,
)
from affectflow.config.features import (
    EgemapsConfig,
    FeaturesConfig,
    LogMelConfig,
    RobustnessConfig,
    SslConfig,
)
from affectflow.config.loader import (
    SortedDumper,
    flatten,
    load_params,
    params_from_text,
    params_from_tree,
    params_yaml,
    parse_override,
    parse_yaml,
    with_overrides,
    yaml_text,
)
from affectflow.config.params import Params
from affectflow.config.platform import (
    PipelineConfig,
    RegistryConfig,
    S3Config,
    TaskResources,
    TrackingConfig,
)
from affectflow.config.serving import MonitorConfig, PredictConfig, TimelineConfig
from affectflow.config.studies import (
    AugmentAblationConfig,
    DannAblationConfig,
    GeneralizationConfig,
    StudiesConfig,
    StudyCondition,
)
from affectflow.config.training import (
    CnnConfig,
    EvaluateConfig,
    MlpConfig,
    SpecAugmentConfig,
    SslHeadConfig,
    SslLinearConfig,
    TrainConfig,
)

__all__ = ["AudioConfig", "AugmentAblationConfig", "AugmentConfig", "CnnConfig", "ConfigError", "CorpusSpec", "DannAblationConfig", "EgemapsConfig", "EvaluateConfig", "FeaturesConfig", "GeneralizationConfig", "IngestConfig", "LatentConfig", "LogMelConfig", "MlpConfig", "MonitorConfig", "Params", "PathsConfig", "PipelineConfig", "PredictConfig", "PretrainConfig", "RegistryConfig", "RobustnessConfig", "S3Config", "Section", "SortedDumper", "SpecAugmentConfig", "SplitsConfig", "SslConfig", "SslHeadConfig", "SslLinearConfig", "StudiesConfig", "StudyCondition", "TaskResources", "TimelineConfig", "TrackingConfig", "TrainConfig", "ValidationConfig", "flatten", "load_params", "params_from_text", "params_from_tree", "params_yaml", "parse_override", "parse_yaml", "with_overrides", "yaml_text"]
