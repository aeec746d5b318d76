"""The model folder: the one format every recognizer is saved in and read from.

    model.pt    the `state_dict` (tensors only: loads with `weights_only=True`)
    model.json  `ModelMeta`: arch, classes, feature kind + configuration, audio configuration,
                normalisation statistics, arch configuration, input size, training facts, lineage

Training, DANN pretraining, evaluation, prediction, serving and the registry all go through
`write_model_folder` / `read_model_meta` / `load_weights`, so a field is defined once (here) and a
folder written by one stage is read the same way by every other. Unknown fields and wrong types
are errors that name the file and the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from affectflow.contracts.json_file import parse_model, read_json_file
from affectflow.storage import atomic_dir, atomic_write_json

MODEL_FILE = "model.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainFacts(_Strict):
    """What the model was trained on and how training ended (model.json `train`)."""

    corpora: list[str] = Field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    n_synthetic: int = 0
    train_speakers: list[str] = Field(default_factory=list)
    val_speakers: list[str] = Field(default_factory=list)
    best_epoch: int | None = None
    val_uar: float | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    params: dict[str, Any] | None = None
    """train.* settings of the run (recognizers) — absent for a DANN encoder."""
    latent_augmentation: dict[str, Any] | None = None
    """Set when the head was retrained on real + synthetic embeddings (`affectflow augment-latent`):
    generator, style, filters, ratio, real and synthetic row counts, the base model folder."""


class PretrainFacts(_Strict):
    """What DANN pretraining saw (model.json `pretrain`, encoder folders and models fine-tuned from them)."""

    method: str = "dann"
    domains: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    adaptation_speakers: list[str] = Field(default_factory=list)
    normalize: str = "global"
    normalization: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"


class DeployNormalization(_Strict):
    """Standardising audio of a corpus the model was not trained on: `pooled` (the training
    statistics) or `running` (the deployment's own traffic, clip by clip, after `min_clips` clips;
    memory of about `window` clips: `affectflow.serving.deployment`)."""

    mode: Literal["pooled", "running"] = "pooled"
    min_clips: int = 20
    window: int = 1000

    @field_validator("mode", mode="before")
    @classmethod
    def _legacy_set(cls, v: Any) -> Any:
        """Folders written before running statistics said `set` (the batch's own statistics), which
        is no longer offered for deployment: they get the running statistics, its label-free successor."""
        return "running" if v == "set" else v


class Calibration(_Strict):
    """Temperature scaling of the logits (model.json `calibration`): probabilities are
    softmax(logits / temperature) wherever they are produced (`serving.recognizer.predict_features`).
    Fitted on clips of the training data's held-out (validation) speakers, never on the test split."""

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0)
    fitted_on: str
    """Which clips the temperature was fitted on (e.g. "validation speakers of ravdess, emodb")."""
    n: int = Field(ge=1)
    ece_before: float
    ece_after: float
    """Expected calibration error on those same clips before / after (in-sample: the held-out
    figures are evaluate's)."""


class DimensionFacts(_Strict):
    """The model's dimensional head (model.json `dimensions`): outputs `names` on [-1, 1], trained
    jointly with the class head (`models.dimensions`) on the targets of `corpora.dimensions`."""

    names: list[str]
    weak_labels: bool
    """True when any training target came from the categorical mapping (weak labels)."""
    sources: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Training corpus -> dimension -> labelled | weak | missing."""
    loss_weight: float = 0.0
    """`train.dimension_weight` of the run."""


class ModelMeta(_Strict):
    """model.json of a model folder."""

    format: int = FORMAT_VERSION
    arch: str
    classes: list[str]
    feature: str
    """Feature kind the model reads (`logmel`, `egemaps`, ...)."""
    feature_config: dict[str, Any]
    """The kind's settings from the `features` section of params.yaml: prediction recomputes
    features from audio with them."""
    feature_key: str = ""
    audio: dict[str, Any]
    normalization: dict[str, Any]
    """`NormStats.as_dict()` of the training split (or the DANN source)."""
    normalization_per_corpus: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Statistics of the corpora the model was trained on (each standardised by its own)."""
    deploy_corpus: str | None = None
    """A DANN encoder's single adaptation target: unknown audio is taken to come from it."""
    deploy_normalization: DeployNormalization = Field(default_factory=lambda: DeployNormalization())
    """How audio of any other corpus is standardised (label-free)."""
    arch_config: dict[str, Any]
    input_dim: int
    lineage: dict[str, str] = Field(default_factory=dict)
    train: TrainFacts = Field(default_factory=TrainFacts)
    pretrain: PretrainFacts | None = None
    dimensions: DimensionFacts | None = None
    """None: no dimensional head (folders written before it, or `train.dimension_weight: 0`)."""
    calibration: Calibration | None = None
    """None: uncalibrated softmax (folders written before calibration existed, or no validation rows)."""
    mlflow: dict[str, str] | None = None
    """`tracking_uri`, `run_id`, `experiment_id` of the run that made the folder."""

    @property
    def sample_rate(self) -> int:
        return int(self.audio["sample_rate"])

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_meta(data: Any, where: str | Path) -> ModelMeta:
    """model.json content -> ModelMeta; errors name the file and the field."""
    return parse_model(ModelMeta, data, where, ModelFolderError)


def read_model_meta(folder: str | Path) -> ModelMeta:
    """The metadata of a model folder."""
    f = Path(folder) / META_FILE
    return parse_meta(read_json_file(f, ModelFolderError, f"not a model folder (no {META_FILE})"), f)


def content_hash(folder: str | Path) -> str:
    """sha256 over every file of the folder (relative path and bytes), 64 hex digits: the model's
    identity. A copy (the MLflow `model_folder` artifact, a download of it) hashes the same, so an
    evaluation, a registry version and a folder fetched back from MLflow can be matched."""
    base = Path(folder)
    if not (base / META_FILE).is_file():
        raise FileNotFoundError(f"{base / META_FILE}: not a model folder (no {META_FILE})")
    h = hashlib.sha256()
    for f in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(f.relative_to(base).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def is_model_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def load_weights(folder: str | Path) -> dict[str, Any]:
    """model.pt as a state_dict of CPU tensors."""

    f = Path(folder) / MODEL_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: model weights not found")
    return load_state_file(f)


def load_state_file(path: str | Path) -> Any:
    """`torch.load` of a weights or checkpoint file (CPU, weights only); a truncated or corrupt
    file is a ModelFolderError naming it, not torch's bare "PytorchStreamReader failed ..."."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, zipfile errors, ...
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ModelFolderError(f"{path}: cannot read it ({size} bytes; truncated or corrupt): "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def write_model_folder(folder: str | Path, module: Any, meta: ModelMeta) -> Path:
    """model.pt + model.json, atomically: the folder appears complete or not at all."""
    import torch

    with atomic_dir(folder) as tmp:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch.save(state, tmp / MODEL_FILE)
        atomic_write_json(tmp / META_FILE, meta.to_json())
    return Path(folder)


def corpus_normalization(pretrain: PretrainFacts | None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per-corpus statistics of an encoder DANN-pretrained with `pretrain.normalize: corpus` (the
    encoder learnt on each corpus standardised by its own statistics, so the recognizer must see its
    inputs the same way), and the corpus unknown audio is assumed to come from: the adaptation target
    when there is exactly one. ({}, None) for every other model."""
    norm = pretrain.normalization if pretrain else {}
    if norm.get("mode") != "corpus" or not norm.get("per_corpus"):
        return {}, None
    targets = list(pretrain.targets) if pretrain else []
    return dict(norm["per_corpus"]), targets[0] if len(targets) == 1 else None
