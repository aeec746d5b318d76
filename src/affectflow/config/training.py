"""Settings of the model sections (`train` and its architectures) and `evaluate`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from affectflow.config.base import Section


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
    weighted sum of the layers' time-averaged states (SUPERB / EmoBox), then an MLP. How many layers
    is the features' business (`features.ssl`), not a setting here (`models.ssl.SslHeadArch`)."""

    hidden: list[int] = Field(default_factory=lambda: [256], min_length=1)
    dropout: float = Field(0.2, ge=0, lt=1)


class SslLinearConfig(Section):
    """`train.model: ssl_linear`: ONE encoder layer of the ssl features (its time-averaged hidden
    state) and a multinomial logistic regression (issue 27's probe recipe, in the product). Why not
    the layer-weighted MLP: on held-out corpora the linear head on the middle layer transfers better
    (benchmarks/RESULTS.md, "Whisper front-end"). How many layers is the features' business
    (`models.ssl_linear.SslLinearArch`)."""

    layer: int | Literal["auto", "middle"] = "auto"
    """The encoder's hidden-state index (0 = the input embedding, negative from the encoder's end;
    one `features.ssl.layers` keeps); middle (the encoder's hidden states // 2: Whisper-base's 3 of
    0-6, the probe's recipe); or auto: chosen among the kept states on the training data only
    (`stages/train/linear.py`: leave-one-corpus-out over the training corpora, streamed protocol;
    one corpus: its validation speakers; neither: the middle layer). A model folder stores the
    chosen hidden-state index."""
    c: float = Field(0.1, gt=0)
    """Inverse L2 regularisation strength (scikit-learn's C) when `c_grid` is empty or cannot be
    chosen on (one training corpus); the study's fixed-C rows read it."""
    c_grid: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    """When set, C is chosen from these on the training data only, after the layer and by the same
    rule (`stages/train/linear.py`: leave-one-training-corpus-out, streamed UAR); [] = `c`. Not the
    default: over 0.001-1 it gave +0.6 streamed mean UAR on leave-one-corpus-out but EmoDB -0.9
    and neutral recall -4.6 (benchmarks/RESULTS.md, "C chosen inside the training corpora")."""
    max_iter: int = Field(2000, ge=10)


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
    model: Literal["cnn_bigru", "egemaps_mlp", "compare_mlp", "ssl_head", "ssl_linear"] = "ssl_linear"
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
    dimension_weight: float = Field(0.5, ge=0)
    """Weight of the dimensional heads' loss (arousal, valence[, dominance]: mean 1 - CCC per
    dimension, `models.dimensions`) added to the class loss; 0: no dimensional head."""
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
