"""Settings of `predict` (and its timeline)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from affectflow.config.base import Section


class TimelineConfig(Section):
    """`affectflow predict --timeline` (and the served `timeline` option): a long recording scored in
    overlapping windows, smoothed, as a sequence of segments (`affectflow.serving.timeline`)."""

    window_s: float = Field(3.0, gt=0)
    """Window scored at a time: about the clip length the model was trained on (acted corpora: 2-4 s)."""
    hop_s: float = Field(1.0, gt=0)
    """Step between window starts = the timeline's resolution (a change is located within one hop)."""
    smooth: int = Field(3, ge=1)
    """Centred moving average over this many windows' probabilities (1 = none)."""

    @model_validator(mode="after")
    def _hop_within_window(self) -> TimelineConfig:
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must not exceed window_s ({self.window_s}): audio between "
                             "windows would never be scored")
        return self


class PredictConfig(Section):
    """`affectflow predict`: registered (or any) model on new audio files, folders or manifests."""

    model_uri: str = ""
    """Model to use: any MLflow model URI or a local model folder; empty = models:/<registry.model_name>@champion."""
    batch_size: int = Field(32, ge=1)
    """Clips (or windows of long clips) per forward pass."""
    max_window_s: float = Field(10.0, gt=0)
    """Audio longer than this is read and scored in windows of this length (bounded memory);
    the clip's probabilities are the mean over its windows."""
    hop_s: float = Field(10.0, gt=0)
    """Step between window starts (hop < window: overlapping windows); the last window ends at the clip's end."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when present."""
    decode_workers: int = Field(2, ge=1)
    """Threads decoding (and resampling) the next clips while the model scores the current batch."""
    threads: int = Field(0, ge=0)
    """torch intra-op threads on CPU (0 = torch's default)."""
    timeline: TimelineConfig = Field(default_factory=lambda: TimelineConfig())

    deploy_stats: str = ""
    """Where this deployment's statistics of unknown-corpus audio are kept (a JSON path or s3://
    URI; `affectflow.serving.deployment`); empty = `<paths.workdir>/deploy_stats/<feature kind>-<feature
    key>.json`. `affectflow deploy-stats show|reset` reads or removes it."""
