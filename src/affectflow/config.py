"""Typed configuration: `params.yaml` is the one source of hyper-parameters.

Every stage section is a pydantic model with `extra="forbid"`, so an unknown key or a wrong type is
an error that names the key (e.g. ``train.lr: Input should be a valid number``). CLI flags and
pipeline parameters override values through dotted keys (``train.epochs=3``) via `apply_overrides`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A problem in params.yaml or an override; the message names the file and the key."""


class Section(BaseModel):
    # strict: `epochs: yes` or `--set train.epochs=true` is an error naming the key, not 1 epoch.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


# --------------------------------------------------------------------------- paths & audio
class PathsConfig(Section):
    workdir: str = "artifacts"
    """Where every stage writes its outputs (local folder or s3:// prefix)."""
    data_root: str = "../shared/data"
    """Corpus roots that are relative resolve against this folder."""


class AudioConfig(Section):
    sample_rate: int = Field(16000, gt=0)
    min_duration_s: float = Field(0.3, ge=0)
    max_duration_s: float = Field(30.0, gt=0)
    min_speech_s: float = Field(0.25, ge=0)
    """Seconds of detected speech (Silero VAD, `affectflow.speech`) a clip needs to be ingested or
    given an emotion; below it the answer is "no speech". 0 turns the check off."""
    speech_threshold: float = Field(0.2, gt=0, lt=1)
    """Silero speech probability from which a 32 ms frame counts as speech. Below Silero's own 0.5:
    shouted speech scores low (RAVDESS strong-intensity clips); generated noise, tones and music
    stay under it (benchmarks/speech_check.py)."""


# --------------------------------------------------------------------------- ingest
class CorpusSpec(Section):
    name: str
    """Name stored in the manifest's `corpus` column (also the DANN domain name)."""
    adapter: Literal["ravdess", "emodb", "crema_d", "tess", "savee", "iemocap", "emovo", "csv"]
    root: str
    """Corpus folder (or, for `csv`, the manifest CSV file); relative to paths.data_root."""
    role: Literal["source", "target", "heldout"] = "source"
    """source: labelled training corpus; target: domain-adaptation corpus (DANN: its training
    speakers unlabelled, its test speakers scored); heldout: never trained on, every clip scored by
    `evaluate` (a corpus nobody tuned for)."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """Per-corpus overrides of ingest.label_map (raw label -> class)."""


class IngestConfig(Section):
    corpora: list[CorpusSpec] = Field(default_factory=lambda: _default_study_corpora())
    """Several labelled corpora by default: the recognizer must hold up on recordings unlike any one."""
    classes: list[str] = Field(default_factory=lambda: ["angry", "happy", "neutral", "sad"])
    """The classes every default corpus has."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """Raw (canonical) label -> class. Labels that are already classes map to themselves;
    anything else that is not mapped is dropped and counted in the summary."""
    on_bad_audio: Literal["fail", "skip"] = "fail"
    """A file that is not usable audio (truncated, corrupt, out of range): stop, or quarantine it."""
    on_no_speech: Literal["fail", "skip"] = "skip"
    """A clip with less than `audio.min_speech_s` of speech: quarantine it (named in the summary and
    a warning), or stop. Skip by default: in a labelled corpus it is most often the detector's miss
    (8 of the four corpora's 5,167 clips, benchmarks/speech_check.py), not a broken file."""
    workers: int = Field(2, ge=1)

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError("classes must be a non-empty list of unique names")
        return v


class SplitsConfig(Section):
    n_folds: int = Field(4, ge=2)
    test_fold: int = Field(0, ge=0)
    test_speakers: list[str] = Field(default_factory=list)
    """If set, these speakers (as `corpus/speaker` or bare speaker ids) form the test split."""
    val_fraction: float = Field(0.0, ge=0, lt=1)
    """Fraction of the training speakers carved off for validation (0: none — only with
    `train.checkpoint: last`, which needs no validation speakers)."""
    source_test: bool = True
    """false: source corpora keep no test speakers (all train / val): the test set is the held-out
    corpora (role heldout), as in leave-one-corpus-out training."""
    seed: int = 13


class ValidationConfig(Section):
    min_examples_per_class_per_split: int = Field(1, ge=0)
    check_decode: bool = True
    """Open every file in the gate and read its last frames (catches truncated audio)."""
    duration_tolerance: float = Field(0.02, ge=0)
    """Relative gap allowed between a file's header duration and the manifest's (file changed since ingest)."""
    report_examples: int = Field(10, ge=1)
    """Offending rows (or groups) listed per failed check in the gate report."""
    fail_on_duplicate_audio: bool = False
    """Byte-identical clips in one split with one label only warn (RAVDESS ships such a pair);
    true fails the gate on any duplicate. Copies across splits or with different labels always fail."""


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

    checkpoint: str = ""
    """A local folder, an s3:// prefix (mirrored into `cache_dir`) or a hub id (with HF_HUB_OFFLINE,
    only from the local Hugging Face cache) of a transformers checkpoint (WavLM, HuBERT, wav2vec 2.0,
    Whisper); a faster-whisper (CTranslate2) folder (converted once into `cache_dir`); or
    `pkg:whisper-base` / `pkg:whisper-tiny.en` (the `whisper-weights` extra's packages). Nothing is
    downloaded at import or test time."""
    layers: list[int] = Field(default_factory=list)
    """Hidden-state indices to keep (0 = the CNN projection, -1 = the last layer); [] = all."""
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


# --------------------------------------------------------------------------- models & training
class CnnConfig(Section):
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    """Output channels of the conv blocks (conv-BN-ReLU-maxpool each)."""
    pool: int = Field(2, ge=1)
    """Max-pool size (frequency and time) of every conv block."""
    gru_hidden: int = Field(64, ge=1)
    """BiGRU hidden size per direction (embedding = 2x this)."""
    attention_hidden: int = Field(64, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


class MlpConfig(Section):
    hidden: list[int] = Field(default_factory=lambda: [256, 128], min_length=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    input_dropout: float = Field(0.2, ge=0, lt=1)
    """Dropout on the standardised input features (a regulariser for wide functional sets)."""


class SslHeadConfig(Section):
    """The head over a pretrained encoder's layers (`train.model: ssl_head`): a learned softmax-
    weighted sum of the layers' time-averaged states (SUPERB / EmoBox), then an MLP."""

    hidden: list[int] = Field(default_factory=lambda: [256], min_length=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    n_layers: int = Field(0, ge=0)
    """Encoder layers in each input vector; filled in by training from the checkpoint (0 here)."""


class SslLinearConfig(Section):
    """`train.model: ssl_linear`: ONE encoder layer of the ssl features (its time-averaged hidden
    state) and a multinomial logistic regression (issue 27's probe recipe, in the product). Why not
    the layer-weighted MLP: on held-out corpora the linear head on the middle layer transfers better
    (benchmarks/RESULTS.md, "Whisper front-end")."""

    layer: int | Literal["auto", "middle"] = "auto"
    """Hidden-state index (0 = the input embedding, negative from the end); middle (n_layers // 2,
    the probe's recipe); or auto: chosen on the training data only (`stages/train/linear.py`:
    leave-one-corpus-out over the training corpora, streamed protocol; one corpus: its validation
    speakers; neither: the middle layer). A model folder stores the chosen index."""
    c: float = Field(0.1, gt=0)
    """Inverse L2 regularisation strength (scikit-learn's C)."""
    max_iter: int = Field(2000, ge=10)
    n_layers: int = Field(0, ge=0)
    """Encoder layers in each input vector; filled in by training from the checkpoint (0 here)."""


class SpecAugmentConfig(Section):
    """Training-time masking and noise on (normalised) log-mel crops; eGeMAPS gets only the noise."""

    time_masks: int = Field(2, ge=0)
    time_width: int = Field(30, ge=0)
    """Largest time mask (frames)."""
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(8, ge=0)
    """Largest frequency mask (mel bins)."""
    noise_std: float = Field(0.0, ge=0)
    """Gaussian noise added to normalised features (in units of their standard deviation)."""
    freq_shift: int = Field(2, ge=0)
    """Largest random shift of the mel axis (bins, edge-padded): a cheap vocal-tract-length perturbation."""


class TrainConfig(Section):
    model: Literal["cnn_bigru", "egemaps_mlp", "compare_mlp", "ssl_head", "ssl_linear"] = "compare_mlp"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "constant"
    warmup_fraction: float = Field(0.3, gt=0, lt=1)
    """onecycle: fraction of the steps spent rising to `lr`."""
    checkpoint: Literal["best_val", "last"] = "last"
    """Which epoch's weights the model keeps: best_val = the best validation UAR, with early stopping
    after `patience` epochs without improvement; last = the final epoch of a fixed `epochs` budget
    (the rule when the epoch count was chosen on other corpora: validation speakers of the training
    corpora say little about a new corpus, see benchmarks/RESULTS.md)."""
    patience: int = Field(10, ge=1)
    """Early stopping: epochs without a better validation UAR before training stops."""
    crop_frames: int = Field(250, ge=8)
    """Random crop length (frames) in training; evaluation uses whole utterances."""
    normalize: Literal["global", "utterance", "corpus"] = "corpus"
    """global: per-dimension mean/std of the training split (kept in model.json); utterance: each
    log-mel clip by its own statistics; corpus: each training corpus by its own statistics (the
    corpus is a recording condition: per-corpus standardisation removes much of it)."""
    deploy_normalize: Literal["auto", "pooled", "running"] = "auto"
    """Audio of a corpus the model was not trained on (predict, the served model): pooled = the
    training statistics; running = the deployment's own statistics, accumulated clip by clip from
    its traffic (label-free, the counterpart of `corpus`; `affectflow.serving.deployment`): each clip
    is standardised by the clips before it, never by the batch it arrives in; the pooled statistics
    until `deploy_min_clips` clips have been seen. auto: running with `normalize: corpus`, else
    pooled. Offline scoring of a whole held-out corpus (evaluate) uses that corpus's statistics."""
    deploy_min_clips: int = Field(20, ge=2)
    """Clips a deployment must have seen before its own statistics replace the pooled ones."""
    deploy_window: int = Field(1000, ge=2)
    """Memory of the running statistics (clips): from then on each clip weighs 1 / window."""
    class_balance: Literal["none", "weighted_loss", "sampler"] = "sampler"
    robustness_copies: int = Field(0, ge=0, le=8)
    """Train also on the first N recording-condition copies of every training clip
    (`features.robustness`; openSMILE kinds). Each (corpus, copy) is its own recording condition:
    with `normalize: corpus` it is standardised by its own statistics. Copies add no steps: an epoch
    still draws as many rows as there are training clips, from the clips and their copies."""
    corpus_balance: bool = True
    """Multi-corpus training: every epoch draws its rows (with replacement) so that each training
    corpus contributes the same number, whatever its size (one big corpus must not become the
    only recording condition the model learns)."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0)
    """Beta(α, α) mixup of training batches (0 = off)."""
    grad_clip: float = Field(5.0, ge=0)
    """Gradient-norm clip (0 = off)."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA; ignored on CPU."""
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    """Ray Train workers. 0: Ray Train local mode, in this process (laptop, CI). N >= 1: N Ray
    workers (DDP), on the cluster at RAY_ADDRESS or on a local Ray started for the run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when torch sees a GPU (on a Ray cluster: when the cluster has GPUs), else CPU;
    cuda: require it. With num_workers >= 1 every Ray worker gets one GPU when this resolves to cuda."""
    threads: int = Field(1, ge=0)
    """torch intra-op threads per worker (0 = torch's default). 1 by default: this small model gains
    nothing from a second thread, and OpenMP spin-waiting makes 2 threads ~4x slower on a busy CPU
    (benchmarks/RESULTS.md)."""
    checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=0)
    """Ray restarts of a failed worker group from its last checkpoint (num_workers >= 1)."""
    controller_failure_limit: int = Field(3, ge=0)
    """Ray Train controller failures (e.g. its worker group cannot be scheduled) tolerated before the run
    fails; Ray's own default (-1) retries for ever while the task holds its pod and GPU."""
    stop_after_epochs: int = Field(0, ge=0)
    """Stop this process (as if killed, raising TrainingInterrupted) after this many epochs; the next
    run resumes from the checkpoint. For time-boxed jobs and for testing resume. 0 = never."""
    checkpoint_dir: str = ""
    """Where runs keep their checkpoints, one folder per run name (`<checkpoint_dir>/<run name>`, the
    name hashes configuration and data), outside the model artifact, so a retried or re-submitted run
    resumes. A folder or an s3:// prefix. Empty: $AFFECTFLOW_RAY_STORAGE (the chart's shared storage,
    set in pipeline pods) when set, else <paths.workdir>/checkpoints."""
    cnn: CnnConfig = Field(default_factory=CnnConfig)
    mlp: MlpConfig = Field(default_factory=MlpConfig)
    ssl_head: SslHeadConfig = Field(default_factory=SslHeadConfig)
    ssl_linear: SslLinearConfig = Field(default_factory=SslLinearConfig)
    specaugment: SpecAugmentConfig = Field(default_factory=SpecAugmentConfig)
    synthetic_ratio: float = Field(0.0, ge=0)
    """Synthetic samples per real training sample (0 = real data only)."""
    balance_minority: bool = False
    """Spend the synthetic budget on the smallest classes first."""
    synthetic_weight: float = Field(1.0, gt=0, le=1)
    """Per-sample loss weight of synthetic rows (real rows weigh 1): below 1 the real distribution
    dominates the gradient while synthetic rows still widen coverage."""
    synthetic_schedule: Literal["constant", "fade"] = "constant"
    """constant: every selected synthetic row in every epoch. fade: epoch e uses a (seed, epoch) draw
    of max(0, 1 - e / round(synthetic_fade_fraction · epochs)) of them, so training ends on real
    rows only ("refocus on the real distribution"); early stopping waits for the real-only epochs."""
    synthetic_fade_fraction: float = Field(0.5, gt=0, le=1)
    """fade: share of `epochs` after which no synthetic rows are used."""
    finetune: Literal["full", "freeze_bn", "freeze_encoder"] = "freeze_encoder"
    """How a `--pretrained` (DANN) encoder is fine-tuned on the labelled source clips. full: every
    layer, BatchNorm statistics re-estimated on the source alone, which erases what DANN learnt about
    the target. freeze_bn: the encoder's BatchNorm layers keep their pretrained statistics and affine
    weights, the rest trains (and drifts back to the source). freeze_encoder: only the head trains.
    RAVDESS -> EmoDB target-validation UAR 33.7 / 37.6 / 48.0 % (benchmarks/RESULTS.md)."""


class EvaluateConfig(Section):
    bootstrap: int = Field(1000, ge=0)
    """Bootstrap resamples for confidence intervals (0 = none)."""
    ci: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    cross_corpus: list[str] = Field(default_factory=list)
    """More corpora of the manifest to score the model on (every `heldout` and `target` corpus is
    scored anyway): every clip, or a DANN target's test split."""
    classes: list[str] = Field(default_factory=list)
    """The class set predictions range over ([] = the model's classes): fixed here, never narrowed
    by the classes a test subset happens to contain."""
    collapse_share: float = Field(0.5, gt=0, le=1)
    """Collapse flag: one class takes more than this share of the predictions..."""
    collapse_recall: float = Field(0.1, ge=0, lt=1)
    """...or a class present in the reference has recall below this."""


# --------------------------------------------------------------------------- augmentation & DANN
class AugmentAblationConfig(Section):
    """`affectflow ablate augmentation`: no / unfiltered / filtered synthetic data, full and low-resource."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    folds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    """Test folds (speaker groups) to rotate through; every seed runs every fold."""
    generators: list[Literal["wgan_gp", "aaec"]] = Field(default_factory=lambda: ["wgan_gp", "aaec"])
    settings: list[Literal["full", "low_resource"]] = Field(default_factory=lambda: ["full", "low_resource"],
                                                             min_length=1)
    """Training-set sizes to run: every training speaker, and/or the low-resource subset."""
    low_resource_fraction: float = Field(0.25, gt=0, le=1)
    """Share of the training speakers kept in the low-resource setting (rounded down, at least 1)."""
    low_resource_epochs: int | None = Field(1200, ge=1)
    """Generator epochs in the low-resource setting (None = augment.epochs). An epoch is one pass over
    the data, so a quarter of the data gives a quarter of the optimiser steps per epoch."""
    model: Literal["cnn_bigru", "egemaps_mlp"] = "egemaps_mlp"
    """Recognizer used for the table (egemaps_mlp keeps the study tractable on a CPU)."""
    synthetic_ratio: float = Field(1.0, gt=0)
    """train.synthetic_ratio of the augmented variants."""
    balance_minority: bool = False
    synthetic_weight: float = Field(1.0, gt=0, le=1)
    """train.synthetic_weight of the augmented variants (in run and table names only when not 1)."""
    synthetic_schedule: Literal["constant", "fade"] = "constant"
    """train.synthetic_schedule of the augmented variants (in run and table names only when fade)."""
    synthetic_fade_fraction: float = Field(0.5, gt=0, le=1)
    """train.synthetic_fade_fraction of the augmented variants (named with the fade)."""
    threads: int = Field(1, ge=0)
    """torch CPU threads for the whole study (0 = torch's default); small models on a shared CPU run best on 1."""


class LatentConfig(Section):
    """Latent-feature augmentation (`affectflow augment-latent`; the generalization study's `latent`
    method): the generator, its style codes and its filter (the rest of `augment.*`) work in a
    trained recognizer's embedding space, and the recognizer's head is retrained on real + kept
    synthetic embeddings (the encoder stays fixed)."""

    ratio: float = Field(1.0, ge=0)
    """Synthetic embeddings per real training clip in the head's training set (at most the kept
    ones); 0 retrains the head on real embeddings only: the no-augmentation control."""
    epochs: int = Field(30, ge=1)
    """Passes of head retraining over real + synthetic embeddings."""
    reinit: bool = True
    """Train the head afresh (true) or continue from the trained one (false). A recognizer trained to
    its budget separates its own training embeddings almost perfectly (head loss ~0), so a continued
    head has nothing left to learn from them; a fresh head's boundary is set by real + synthetic."""
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(64, ge=2)


class AugmentConfig(Section):
    enabled: bool = False
    generator: Literal["wgan_gp", "aaec"] = "wgan_gp"
    feature: Literal["egemaps", "logmel"] = "egemaps"
    segment_frames: int = Field(128, ge=8)
    """Log-mel segment length the generators produce (frames)."""
    segments_per_clip: int = Field(4, ge=1)
    """Random log-mel crops per training clip (the real set the generator learns from)."""
    latent_dim: int = Field(64, ge=1)
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(5e-4, gt=0)
    adam_betas: list[float] = Field(default_factory=lambda: [0.5, 0.9], min_length=2, max_length=2)
    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0)
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    """MLP generator / critic / AAEC decoder hidden sizes (vector features)."""
    conv_channels: list[int] = Field(default_factory=lambda: [32, 64, 128])
    """Conv critic channels per stride-2 block (log-mel); the generator mirrors them."""
    mixed_precision: bool = True
    """bf16 autocast for generator / critic forwards on CUDA (the gradient penalty stays float32)."""
    aaec_k1: int = Field(1, ge=1)
    """AAEC: epochs of encoder + latent discriminator per cycle."""
    aaec_k2: int = Field(1, ge=1)
    """AAEC: epochs of decoder per cycle."""
    aaec_k3: int = Field(1, ge=1)
    """AAEC: epochs of classifier (emotion + real/fake heads) per cycle."""
    aaec_gru_hidden: int = Field(64, ge=1)
    aaec_token_size: int = Field(8, ge=1)
    """AAEC on vectors: the BiGRU reads the vector as a sequence of tokens of this many values."""
    aaec_emotion_on_synthetic: bool = True
    """AAEC's classifier learns emotion from real X and synthetic X' (as in the paper); false: real only."""
    aaec_adv_weight: float = Field(0.1, ge=0)
    """Weight of the adversarial terms (encoder vs latent discriminator, decoder vs real/fake head)."""
    samples_per_class: int = Field(500, ge=1)
    """Generated per class before filtering (a larger pool leaves more to choose from)."""
    filters: list[Literal["realness", "agreement", "manifold", "novelty", "style_novelty"]] = Field(
        default_factory=lambda: ["realness", "agreement", "manifold", "novelty"])
    """Criteria a kept sample must pass; [] keeps everything (unfiltered). `style_novelty` needs
    `style: speaker` and is not in the default list (it is the new-speakers experiment, not a fixed choice)."""
    realness_quantile: float = Field(0.1, ge=0, le=1)
    """Reject samples whose critic score is below this quantile of held-out real scores."""
    realness_holdout: float = Field(0.1, ge=0, lt=1)
    """Share of training clips (per class) the generator does not train on; their critic scores set
    the realness threshold (a critic over-scores the real samples it has memorised). 0 = none."""
    label_tau: float = Field(0.5, ge=0, le=1)
    agreement_hidden: list[int] = Field(default_factory=list)
    """Label-agreement model trained on real training data: [] = logistic regression, else MLP hidden sizes."""
    agreement_alpha: float = Field(1.0, ge=0)
    """L2 strength of the agreement model (logistic regression: C = 1 / alpha)."""
    agreement_max_iter: int = Field(500, ge=1)
    knn_k: int = Field(5, ge=1)
    min_distance_quantile: float = Field(0.05, ge=0, le=1)
    """δ: distance to the nearest real sample must exceed this quantile of real-real NN distances."""
    embedding_pca: int = Field(32, ge=0)
    """Fixed embedding space for filter and report: standardised features -> PCA fitted on real
    training data with this many components (0 = standardised features)."""
    keep_fraction: float = Field(1.0, gt=0, le=1)
    """Per class, keep at most this fraction of the generated samples (best realness first)."""
    style: Literal["none", "speaker"] = "none"
    """none: emotion-conditioned only. speaker: the WGAN-GP is also conditioned on a per-speaker style
    code (PCA of speaker means), and samples are drawn with codes mixed between training speakers (of
    different corpora when there are several), so it can produce voices the training set lacks.
    Vector features (egemaps) and wgan_gp only."""
    style_dim: int = Field(8, ge=1)
    """Length of the style code (PCA components of the per-speaker feature means; zero-padded when
    there are fewer training speakers than components)."""
    style_mix: list[float] = Field(default_factory=lambda: [0.2, 0.8], min_length=2, max_length=2)
    """A new code is (1 - w)·a + w·b for two training speakers a, b with w ~ U(style_mix)."""
    style_noise: float = Field(0.0, ge=0)
    """Gaussian jitter added to a mixed code, in units of the training codes' per-component std
    (> 0 extrapolates beyond the segment between two speakers)."""
    style_novelty_quantile: float = Field(0.5, ge=0, le=1)
    """style_novelty filter: a sample's style distance to the nearest training speaker must exceed this
    quantile of real clips' style distance to their nearest *other* training speaker."""
    latent: LatentConfig = Field(default_factory=LatentConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when present; cuda: require it; cpu."""

    @model_validator(mode="after")
    def _style(self) -> AugmentConfig:
        lo, hi = self.style_mix
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"augment.style_mix: [{lo}, {hi}] must satisfy 0 <= lo <= hi <= 1")
        if self.style != "none":
            if self.feature != "egemaps":
                raise ValueError(f"augment.style: {self.style} needs vector features (augment.feature: egemaps), "
                                 f"not {self.feature}; log-mel generators are emotion-conditioned only")
            if self.generator != "wgan_gp":
                raise ValueError(f"augment.style: {self.style} is implemented for generator wgan_gp only, "
                                 f"not {self.generator}")
        elif "style_novelty" in self.filters:
            raise ValueError("augment.filters: style_novelty needs augment.style: speaker (there is no style "
                             "code to be novel in)")
        return self


class DannAblationConfig(Section):
    """`affectflow ablate dann`: the cross-corpus table (source-only, per-corpus standardisation, DANN,
    DANN + augmentation), source corpus -> target corpus, tested on the target's held-out speakers."""

    source: CorpusSpec = Field(default_factory=lambda: CorpusSpec(
        name="ravdess", adapter="ravdess", root="ravdess", role="source"))
    target: CorpusSpec = Field(default_factory=lambda: CorpusSpec(
        name="emodb", adapter="emodb", root="emodb", role="target"))
    classes: list[str] = Field(default_factory=lambda: ["angry", "happy", "neutral", "sad"], min_length=2)
    """The classes both corpora share; other labels (RAVDESS calm, ...) are dropped at ingest."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """ingest.label_map for the study (e.g. {calm: neutral} to fold RAVDESS calm into neutral)."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    folds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1)
    """Target test folds (speaker groups); pooled over them every target speaker is tested once per seed."""
    model: Literal["cnn_bigru", "egemaps_mlp"] = "egemaps_mlp"
    """Encoder for the table (egemaps_mlp keeps the study tractable on a CPU)."""
    conditions: list[Literal["source_only", "corpus_std", "target_bn", "dann", "dann_selected", "dann_finetuned",
                             "dann_corpus_std", "dann_augment"]] = (
        Field(default_factory=lambda: ["source_only", "corpus_std", "target_bn", "dann", "dann_selected",
                                       "dann_finetuned", "dann_corpus_std", "dann_augment"], min_length=1))
    """See affectflow.studies.dann (target_bn: DANN's batches with λ = 0, a control; dann_selected:
    the adversary setting of `grid` with the best UAR on the target's validation speakers, per fold)."""
    grid: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "quick": {},
        "balanced": {"adversary_lr_scale": 1.0, "domain_hidden": [128]},
        "quick_lambda0.3": {"lambda_max": 0.3},
        "quick_corpus_std": {"normalize": "corpus"},
        "quick_smoothing0.1": {"domain_label_smoothing": 0.1},
        "quick_speaker_adv": {"speaker_adversarial": True},
    }, min_length=1)
    """Adversary settings (pretrain.* overrides) `dann_selected` chooses from, by mean target-validation
    UAR over seeds in each fold; the fold's test speakers play no part in the choice."""
    augment_epochs: int = Field(100, ge=1)
    """Generator epochs for `dann_augment` (one generator per seed and fold)."""
    synthetic_ratio: float = Field(1.0, gt=0)
    """Kept synthetic samples per real source training sample in `dann_augment`."""

    @field_validator("grid")
    @classmethod
    def _grid_keys_are_pretrain_fields(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        allowed = set(PretrainConfig.model_fields)
        for name, overrides in v.items():
            bad = sorted(set(overrides) - allowed)
            if bad:
                raise ValueError(f"grid member '{name}': {bad} are not pretrain settings")
        return v


class PretrainConfig(Section):
    """DANN: the recognizer's encoder (train.model, train.cnn / train.mlp) learns emotion on the source
    corpora while a domain head behind a gradient-reversal layer learns to tell the corpora apart."""

    enabled: bool = False
    target_corpora: list[str] = Field(default_factory=list)
    """Unlabelled adaptation corpora; empty: every corpus whose manifest role is `target`."""
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    """Source clips per step; each step also draws as many target clips."""
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    lambda_max: float = Field(1.0, ge=0)
    """λ(p) = lambda_max · (2 / (1 + exp(-lambda_gamma · p)) - 1) over training progress p in [0, 1]."""
    lambda_gamma: float = Field(10.0, gt=0)
    domain_weight: float = Field(1.0, ge=0)
    """Weight of the domain loss (its gradient into the encoder is also scaled by λ)."""
    adversary_lr_scale: float = Field(10.0, gt=0)
    """Learning rate of the domain / speaker heads relative to `lr` (a quicker adversary keeps the
    encoder from merely fooling the current head)."""
    domain_label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the domain loss: a head that separates the corpora perfectly still passes
    a reversed gradient to the encoder (its cross-entropy cannot saturate at zero)."""
    domain_hidden: list[int] = Field(default_factory=lambda: [256])
    """Hidden sizes of the domain (and speaker) head ([] = linear)."""
    head_dropout: float = Field(0.2, ge=0, lt=1)
    speaker_adversarial: bool = False
    """Add a speaker head behind its own gradient reversal (speaker-invariant embeddings)."""
    speaker_weight: float = Field(0.3, ge=0)
    normalize: Literal["global", "corpus"] = "global"
    """global: every corpus with the source training statistics (the recognizer's input normalisation);
    corpus: each corpus with its own statistics from its adaptation clips (per-corpus standardisation)."""
    grad_clip: float = Field(5.0, ge=0)
    """Gradient-norm clip (0 = off)."""
    compare_source_only: bool = True
    """Also train the same encoder without the domain loss, as the "before adaptation" reference."""
    probe: Literal["logreg", "mlp"] = "logreg"
    """Fresh domain classifier on held-out embeddings (proxy A-distance = 2 (1 - 2 ε))."""
    probe_folds: int = Field(5, ge=2)
    """Speaker-grouped cross-validation folds of the probe (fewer when a domain has fewer speakers)."""
    probe_max_iter: int = Field(2000, ge=1)
    probe_hidden: list[int] = Field(default_factory=lambda: [64])
    projection: Literal["pca", "tsne"] = "pca"
    """2-D projection of held-out source and target embeddings before and after adaptation."""
    projection_max_points: int = Field(2000, ge=10)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when present; cuda: require it; cpu."""
    threads: int = Field(0, ge=0)
    """torch intra-op threads on CPU (0 = torch's default)."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA; ignored on CPU."""


# --------------------------------------------------------------------------- tracking, registry, pipeline
class TrackingConfig(Section):
    uri: str = "sqlite:///artifacts/mlflow.db"
    artifact_location: str = "artifacts/mlartifacts"
    experiment: str = "affectflow"
    log_model: bool = True
    """Log each trained model as a pyfunc (audio in, probabilities out); k-fold runs never do."""


class RegistryConfig(Section):
    model_name: str = "affectflow-ser"
    min_uar_gain: float = Field(0.005, ge=0)
    """Challenger UAR must reach champion UAR + this margin to take `champion`."""
    min_class_recall: float = Field(0.0, ge=0, le=1)
    """No class recall of a promoted version may fall below this floor."""
    auto_promote: bool = True
    """`register` moves `champion` itself when the gate passes (False: record the gate only)."""
    history_limit: int = Field(200, ge=1)
    """Promotion / rollback events kept (one `event.<seq>` tag each on the registered model; the
    oldest are dropped first, except those the rollback stack still needs)."""


_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def cpu_cores(q: str) -> float:
    """A Kubernetes CPU quantity ("500m", "2", "1.5") in cores."""
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory_bytes(q: str) -> float:
    """A Kubernetes memory quantity ("512Mi", "4Gi", "1G") in bytes."""
    m = re.match(r"^([\d.]+)([A-Za-z]*)$", q)
    assert m is not None
    return float(m.group(1)) * _UNITS[m.group(2)]


class TaskResources(Section):
    """CPU / memory requests and limits of one pipeline task (Kubernetes quantities); unset fields
    keep the built-in default of that task (`DEFAULT_TASK_RESOURCES`)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpu: int | None = Field(None, ge=0)
    """GPUs of a GPU task (augment, pretrain, train, features on the GPU); unset: pipeline.gpu_limit."""
    timeout_s: int | None = Field(None, ge=1)
    """Seconds before Kubernetes stops the task's pod (activeDeadlineSeconds): a hung task must not hold
    its node, or its GPU, for ever."""

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _number_as_text(cls, v: Any) -> Any:
        """`cpu_limit: 2` in YAML is a number; Kubernetes quantities are text."""
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, v: str | None) -> str | None:
        if v is not None and not _CPU.match(v):
            raise ValueError(f"{v!r} is not a CPU quantity (e.g. '500m', '2')")
        return v

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not _MEMORY.match(v):
            raise ValueError(f"{v!r} is not a memory quantity (e.g. '512Mi', '4Gi')")
        return v


def _res(cpu: tuple[str, str], memory: tuple[str, str], hours: float = 1.0) -> TaskResources:
    return TaskResources(cpu_request=cpu[0], cpu_limit=cpu[1], memory_request=memory[0], memory_limit=memory[1],
                         timeout_s=int(hours * 3600))


_SMALL = _res(("250m", "1"), ("512Mi", "2Gi"))
DEFAULT_TASK_RESOURCES: dict[str, TaskResources] = {
    "resolve-params": _SMALL, "skip-augment": _SMALL, "skip-pretrain": _SMALL, "register": _SMALL,
    "promote": _SMALL, "record-run-status": _SMALL, "data-stamp": _SMALL,
    "ingest": _res(("1", "2"), ("1Gi", "4Gi"), hours=6),
    "validate": _res(("500m", "2"), ("1Gi", "4Gi"), hours=4),
    "validate-features": _res(("500m", "2"), ("1Gi", "4Gi"), hours=4),
    "plan-features": _SMALL,
    "features": _res(("2", "4"), ("4Gi", "8Gi"), hours=12),  # one task per shard, in parallel (ParallelFor)
    "gather-features": _res(("1", "2"), ("2Gi", "8Gi"), hours=4),  # the shards into one store with its index
    "augment": _res(("2", "4"), ("4Gi", "16Gi"), hours=12),
    "pretrain": _res(("2", "4"), ("4Gi", "16Gi"), hours=12),
    "train": _res(("2", "4"), ("4Gi", "16Gi"), hours=24),
    "evaluate": _res(("1", "2"), ("2Gi", "8Gi"), hours=4),
    "rescore-champion": _res(("1", "2"), ("2Gi", "8Gi"), hours=4),  # downloads the champion and scores a test set
}
"""Requests, limits and timeouts per pipeline task (by component name). Tasks that read audio or train get
room (log-mel extraction and GAN training are the OOM risks) and hours; bookkeeping tasks get little.
A task the table does not name (one added to the DAG later) gets `DEFAULT_TASK`."""
DEFAULT_TASK = _SMALL


class PipelineConfig(Section):
    """Compile-time settings of the Kubeflow pipeline (never part of a run's form or a cache key)."""

    host: str = ""
    namespace: str = "kubeflow"
    """Where pipeline runs execute; must equal the chart's `kubeflow.namespace`."""
    image_cpu: str = ""
    image_gpu: str = ""
    gpu_limit: int = Field(1, ge=0)
    """GPUs per GPU task (augment, pretrain, train; features when log-mel runs on the GPU); 0 = none."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    s3_secret: str = "affectflow-s3"
    """Secret with AWS_* / MLFLOW_S3_ENDPOINT_URL, mounted (required) on every data task."""
    mlflow_secret: str = "affectflow-mlflow"
    """Secret with MLFLOW_TRACKING_URI, mounted (required) on the tasks that log or register."""
    env_config_map: str = "affectflow-pipeline-env"
    """The chart's ConfigMap with RAY_ADDRESS and AFFECTFLOW_RAY_STORAGE (chart `kubeflow.envConfigMapName`)."""
    require_tracking_server: bool = True
    """In a Kubeflow pod, a task that logs to MLflow fails (naming the Secret key) unless
    MLFLOW_TRACKING_URI names a tracking server: a sqlite file inside a pod vanishes with it."""
    ray_cluster: bool = False
    """true: the train task submits its Ray workers (train.num_workers >= 1) to the KubeRay cluster at
    the ConfigMap's RAY_ADDRESS; the train pod then runs in the CPU image and requests no GPU (the Ray
    workers hold them). false: Ray runs inside the train pod, which gets the GPU."""
    features_on_gpu: Literal["auto", "always", "never"] = "auto"
    """Run the features task in the GPU image with a GPU: auto = when log-mel is extracted and
    features.device is not cpu (and gpu_limit > 0)."""
    features_parallelism: int = Field(8, ge=0)
    """Most `features` shard tasks (pods) at once in the fan-out (`dsl.ParallelFor`); 0 = no limit."""
    resources: dict[str, TaskResources] = Field(default_factory=dict)
    """Per task (component name: ingest, features, train, ...): overrides of `DEFAULT_TASK_RESOURCES`."""
    run_as_user: int = Field(10001, ge=1)
    """UID (and GID) every task runs as, non-root (the images own /minio, /s3, /gcs for it)."""
    retries: int = Field(2, ge=0)
    schedule_cron: str = "0 0 3 * * 1"
    max_concurrency: int = Field(1, ge=1)

    @field_validator("resources")
    @classmethod
    def _known_tasks(cls, v: dict[str, TaskResources]) -> dict[str, TaskResources]:
        unknown = sorted(set(v) - set(DEFAULT_TASK_RESOURCES))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {sorted(DEFAULT_TASK_RESOURCES)}")
        return v

    def resources_for(self, task: str) -> TaskResources:
        """The task's requests and limits: its `resources` entry over the built-in default; a request
        above its limit is an error naming the field."""
        base = DEFAULT_TASK_RESOURCES.get(task, DEFAULT_TASK).model_dump()
        given = self.resources.get(task)
        if given is not None:
            base.update({k: v for k, v in given.model_dump().items() if v is not None})
        out = TaskResources(**base)
        for kind, parse in (("cpu", cpu_cores), ("memory", memory_bytes)):
            req, lim = getattr(out, f"{kind}_request"), getattr(out, f"{kind}_limit")
            if req and lim and parse(req) > parse(lim):
                raise ConfigError(f"pipeline.resources.{task}.{kind}_request: {req} is above its limit {lim}")
        return out


class S3Config(Section):
    """Object storage for s3:// corpora, features and models; credentials come from the AWS env."""

    endpoint_url: str = ""
    """Empty: AWS_ENDPOINT_URL from the environment (or AWS itself)."""
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    """path-style URLs work with SeaweedFS/MinIO and in-cluster service names."""
    cache_dir: str = ""
    """Local mirror of s3:// inputs; empty: <paths.workdir>/s3cache (or ~/.cache/affectflow/s3)."""
    multipart_threshold_mb: int = Field(16, ge=5)
    multipart_chunksize_mb: int = Field(16, ge=5)
    """S3 parts are at least 5 MiB (except the last)."""
    max_concurrency: int = Field(8, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    """Longest wait for an answer on an open connection, per attempt (10 s x 3 attempts: an endpoint
    that never answers fails within 30 s by default)."""
    max_attempts: int = Field(3, ge=1)
    """Tries per request, the first included (an endpoint that never answers fails after about
    max_attempts x read_timeout_s, as S3EndpointError)."""


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


class StudyCondition(Section):
    """One row of `affectflow ablate generalization`."""

    method: Literal["svm", "recognizer", "dann", "augment", "latent", "aaec_classifier", "ssl_compare_fusion",
                    "ssl_mlp", "ssl_dann", "ssl_speaker_adversarial", "ssl_corpus_adversarial"]
    """svm: RBF SVM (C=10, balanced) on eGeMAPS with per-corpus standardisation — the reference a
    user would try first, outside the product; recognizer: the train stage (then evaluate) with
    `overrides`; dann: the pretrain stage with the held-out corpus as unlabelled target, then train
    (`--pretrained`) and evaluate; augment: the augment stage on the training corpora, then train
    with its synthetic set (`train.synthetic_ratio`) and evaluate; latent: train, then latent-feature
    augmentation of the head (`augment.latent`), then evaluate; aaec_classifier: AAEC trained on the
    training corpora's per-corpus standardised eGeMAPS, its own emotion classifier as the recognizer;
    ssl_*: rows on one layer of the ssl features outside the train stage (`studies/ssl_rows.py`):
    ssl_compare_fusion (that layer + ComParE, a logistic regression), ssl_mlp (an MLP, the baseline of
    the three adversarial rows), ssl_dann (the held-out corpus as unlabelled target), ssl_speaker_adversarial
    and ssl_corpus_adversarial (gradient reversal on training speakers / source corpora, no target audio)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted params overrides of this condition (train.*, features.*, augment.*, pretrain.*)."""
    select: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Candidate settings (dotted overrides), chosen per held-out corpus by leave-one-source-corpus-
    out inside the training corpora (the held-out corpus plays no part): each candidate is scored
    with every training corpus in turn as the inner held-out (and, for dann, unlabelled target)."""


def _default_study_corpora() -> list[CorpusSpec]:
    return [CorpusSpec(name="ravdess", adapter="ravdess", root="ravdess"),
            CorpusSpec(name="emodb", adapter="emodb", root="emodb"),
            CorpusSpec(name="tess", adapter="tess", root="tess"),
            CorpusSpec(name="emovo", adapter="emovo", root="emovo")]


class GeneralizationConfig(Section):
    """`affectflow ablate generalization`: leave-one-corpus-out. For every corpus of `held_out`,
    train on the others and score every clip of it over `classes`."""

    corpora: list[CorpusSpec] = Field(default_factory=_default_study_corpora, min_length=2)
    """Study corpora (roles are set by the study); any corpus is one entry, e.g. a CSV manifest."""
    held_out: list[str] = Field(default_factory=list)
    """Corpora to hold out in turn ([] = every corpus of `corpora`)."""
    classes: list[str] = Field(default_factory=lambda: ["angry", "happy", "neutral", "sad"], min_length=2)
    label_map: dict[str, str] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    conditions: dict[str, StudyCondition] = Field(default_factory=lambda: {
        "reference": StudyCondition(method="svm"),
        "shipped": StudyCondition(method="recognizer"),
    }, min_length=1)
    """Rows of the table, in order (params.yaml lists the study's own)."""
    selection_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Seeds of the inner leave-one-source-out runs that choose among a condition's `select`."""


class StudiesConfig(Section):
    """Settings of the studies (`affectflow ablate ...`): not read by any pipeline stage, so changing
    them never invalidates a cached stage or a trained model."""

    augmentation: AugmentAblationConfig = Field(default_factory=AugmentAblationConfig)
    dann: DannAblationConfig = Field(default_factory=DannAblationConfig)
    generalization: GeneralizationConfig = Field(default_factory=GeneralizationConfig)


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


def _format_error(err: ValidationError, source: str, overrides: Mapping[str, Any] | None = None) -> str:
    """One line per problem; a problem caused by an override names the override, not the file."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        given = next((k for k in (overrides or {}) if key == k or key.startswith(k + ".")), None)
        where = f"override {given}={_show(overrides[given])}" if given is not None and overrides else source
        lines.append(f"{where}: {key}: {msg}")
    if len(lines) == 1:
        return lines[0]
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value")
    key, raw = item.split("=", 1)
    return key.strip(), parse_yaml(raw, f"override '{item}'")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", None)  # the text names both lines
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-4` (no dot) as a string, which a strict float
# field would refuse; every YAML 1.2 tool reads it as 0.0001.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data, with duplicate keys as errors; errors name `source`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:  # one line: PyYAML's own text quotes the offending lines below
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{source}: not valid YAML: {what}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None


def params_from_tree(tree: Any, source: str, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Params:
    """Validate a parsed params tree (+ dotted overrides) once; errors name the file or the override."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    items = dict(overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides))
    for key, value in items.items():
        _set_dotted(tree, key, value)
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, items)) from None


def load_params(
    path: str | Path | None = "params.yaml",
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> Params:
    """Load params.yaml (missing file -> defaults), apply dotted overrides, validate once."""
    tree: Any = {}
    source = str(path) if path else "<defaults>"
    if path is not None and Path(path).exists():
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        tree = parse_yaml(text, source)
    elif path is not None and str(path) != "params.yaml":
        raise ConfigError(f"{source}: file not found")
    return params_from_tree(tree, source, overrides)


def params_from_text(text: str, source: str, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Params:
    """Params from YAML text (a pipeline's compiled-in params.yaml), then overrides."""
    return params_from_tree(parse_yaml(text, source), source, overrides)


def with_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """A validated copy of `params` with dotted keys replaced (`train.seed` -> 3): how studies and
    tests derive per-run settings without re-reading params.yaml. An unknown key is an error."""
    tree = params.model_dump(mode="json")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {key}: unknown parameter (no section '{part}')")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {key}: unknown parameter")
        node[leaf] = value
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, "overrides", dict(overrides))) from None


class SortedDumper(yaml.SafeDumper):
    """A YAML dumper whose mappings are always in sorted key order: text that depends on the data
    only, not on process state (`oyaml`, which openSMILE imports, patches PyYAML's dict output)."""


SortedDumper.add_representer(
    dict, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", sorted(data.items(), key=lambda kv: str(kv[0]))))


def yaml_text(value: Any, flow: bool = False) -> str:
    """`value` as canonical YAML (sorted keys); `flow`: one line, `[a, b]` / `{k: v}` style (never
    wrapped: a run-form default must stay on its line of the IR's comment header)."""
    return yaml.dump(value, Dumper=SortedDumper, default_flow_style=flow, sort_keys=True,
                     width=float("inf") if flow else 80)


def params_yaml(params: Params) -> str:
    """params as YAML text, sections in file order (what `params_from_text` reads back)."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def flatten(params: Params) -> dict[str, Any]:
    """Flat `section.key` dict (for MLflow params and pipeline parameters)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", params.model_dump(mode="json"))
    return out
