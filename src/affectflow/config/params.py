"""`Params`: the whole params.yaml, one field per section."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field

from affectflow.config.augment import AugmentConfig, PretrainConfig
from affectflow.config.base import Section
from affectflow.config.data import (
    AudioConfig,
    CorpusSpec,
    IngestConfig,
    PathsConfig,
    SplitsConfig,
    ValidationConfig,
)
from affectflow.config.features import FeaturesConfig
from affectflow.config.platform import PipelineConfig, RegistryConfig, S3Config, TrackingConfig
from affectflow.config.serving import MonitorConfig, PredictConfig
from affectflow.config.studies import StudiesConfig
from affectflow.config.training import EvaluateConfig, TrainConfig


class Params(Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    s3: S3Config = Field(default_factory=S3Config)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    studies: StudiesConfig = Field(default_factory=StudiesConfig)

    # -------------------------------------------------------------- helpers
    def workdir(self) -> Path:
        return Path(self.paths.workdir)

    def corpus_root(self, spec: CorpusSpec) -> str:
        """Resolve a corpus root against paths.data_root (s3:// and absolute paths pass through)."""
        if "://" in spec.root or Path(spec.root).is_absolute():
            return spec.root
        base = self.paths.data_root
        if "://" in base:
            return base.rstrip("/") + "/" + spec.root
        return str(Path(base) / spec.root)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections, so artifacts can say what configuration made them."""
        payload = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
