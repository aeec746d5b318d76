"""Settings of `predict` (and its timeline) and of the prediction log / `affectflow monitor`."""

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


class MonitorConfig(Section):
    """The prediction log (`serving/prediction_log.py`) and `affectflow monitor` (`serving/monitor.py`).

    Logging is on by default for `affectflow predict` (a record holds no audio and no identity: class
    probabilities, duration and a 16-number feature summary; the monitor has nothing to watch
    without it); the servers log when given a location (ServingConfig `prediction_log`, KServe
    `--prediction_log`). Audio is kept only with `keep_audio` (speech is personal data)."""

    enabled: bool = True
    """`affectflow predict` appends one record per file to `log`."""
    log: str = ""
    """The prediction log: a folder or s3:// prefix of date-partitioned Parquet parts; empty =
    <paths.workdir>/prediction_log."""
    summary_dims: int = Field(16, ge=2, le=256)
    """Length of each record's feature summary (the clip's time-pooled features standardised with the
    training statistics; a fixed random projection when the features have more dimensions)."""
    flush_records: int = Field(256, ge=1)
    """A server writes a part file once this many records are buffered (or `flush_s` has passed)."""
    flush_s: float = Field(60.0, gt=0)
    keep_audio: bool = False
    """Keep each logged clip's audio (FLAC at the model's rate, beside the records) as DANN's unlabelled
    target for the next retraining; off: speech is personal data, keep it only with consent."""
    retention_days: int = Field(30, ge=1)
    """Partitions (records and audio) older than this are deleted (`affectflow monitor`, server start)."""
    window_days: float = Field(7.0, gt=0)
    """`affectflow monitor` judges the records of the last this many days."""
    min_clips: int = Field(100, ge=10)
    """Fewer logged clips with speech in the window: no verdict (exit 0, status `insufficient`)."""
    reference_clips: int = Field(2000, ge=10)
    """Training clips sampled (speaker-stratified by the sampler's seed) as the reference."""
    permutations: int = Field(200, ge=10)
    """Permutations of the MMD test."""
    p_value: float = Field(0.01, gt=0, lt=1)
    """Drift needs the MMD permutation p-value below this..."""
    auc_threshold: float = Field(0.75, gt=0.5, le=1)
    """...and the domain classifier (logged vs training clips, cross-validated) to reach this AUC
    (an effect size: held-out speakers of the training corpora differ a little, a new microphone a lot)."""
    null_splits: int = Field(5, ge=0)
    """Speaker splits of the reference that measure how far *new speakers of the training data*
    separate from the training speakers (0: no null, `auc_threshold` alone)."""
    null_margin: float = Field(0.03, ge=0)
    """Drift needs the window's AUC above every null split's AUC by this much."""
    psi_threshold: float = Field(0.25, gt=0)
    """Per summary dimension: PSI above this is a major shift (reported; the drift verdict is MMD + AUC)."""
    collapse_share: float = Field(0.8, gt=0, le=1)
    """Collapse: one class takes at least this share of the window's predictions."""
    prior_tv: float = Field(0.3, gt=0, le=1)
    """Prior shift: total-variation distance between predicted-class shares and the training prior."""
    seed: int = 0
