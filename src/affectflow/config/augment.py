"""Settings of the `augment` and `pretrain` (DANN) sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from affectflow.config.base import Section


# --------------------------------------------------------------------------- augmentation & DANN
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


class PretrainConfig(Section):
    """DANN: the recognizer's encoder (train.model, train.cnn / train.mlp) learns emotion on the source
    corpora while a domain head behind a gradient-reversal layer learns to tell the corpora apart."""

    enabled: bool = False
    target_corpora: list[str] = Field(default_factory=list)
    """Unlabelled adaptation corpora; empty: every corpus whose manifest role is `target`."""
    target_log: str = ""
    """A prediction log (folder or s3:// prefix) whose scored clips are one more unlabelled target,
    corpus `deployment` (`stages/pretrain/log_target.py`); empty: none."""
    select: Literal["none", "dev"] = "none"
    """dev: decide without target labels whether to adapt and with which λ (deep embedded validation,
    `models/dev.py`) among no adaptation and DANNs with `select_lambdas`; the chosen encoder is written."""
    select_lambdas: list[float] = Field(default_factory=lambda: [0.3, 1.0])
    """DANN strengths (lambda_max) DEV chooses among, besides no adaptation."""
    select_margin: float = Field(0.0, ge=0)
    """A DANN is chosen only when its DEV risk is below no adaptation's by more than this."""
    select_confidence: float = Field(0.95, ge=0, lt=1)
    """...and only when it is below in at least this share of speaker-block bootstrap resamples of
    the validation clips (`models/dev.py:confident`: DEV's estimate is noisy; 0 = the point
    estimate alone)."""
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
