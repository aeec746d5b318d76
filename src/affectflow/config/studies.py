"""Settings of the studies (`studies:`), which no stage reads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from affectflow.config.augment import PretrainConfig
from affectflow.config.base import Section
from affectflow.config.data import CorpusSpec, _default_study_corpora


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


class StudyCondition(Section):
    """One row of `affectflow ablate generalization`."""

    method: Literal["svm", "recognizer", "dann", "augment", "latent", "aaec_classifier", "ssl_compare_fusion",
                    "ssl_mlp", "ssl_dann", "ssl_speaker_adversarial", "ssl_corpus_adversarial",
                    "ssl_logistic", "ssl_egemaps_fusion", "ssl_layer_pair", "ssl_layer_pair_mean", "ssl_linear_mlp_ensemble"]
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
    and ssl_corpus_adversarial (gradient reversal on training speakers / source corpora, no target audio),
    ssl_logistic (that layer, a logistic regression), ssl_egemaps_fusion (that layer + eGeMAPS), ssl_layer_pair / ssl_layer_pair_mean (that layer and the
    next, concatenated / averaged; a logistic regression), ssl_linear_mlp_ensemble (the logistic
    regression and the MLP on that layer, probabilities averaged)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted params overrides of this condition (train.*, features.*, augment.*, pretrain.*)."""
    select: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Candidate settings (dotted overrides), chosen per held-out corpus by leave-one-source-corpus-
    out inside the training corpora (the held-out corpus plays no part): each candidate is scored
    with every training corpus in turn as the inner held-out (and, for dann, unlabelled target)."""


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
