"""The evaluation result: evaluate's `metrics.json`, one writer and one reader.

    format          2 (files without it are the earlier layout, read and converted: see below)
    model           which model was scored: its folder's content hash, MLflow run, folder, arch
    corpora         the corpora whose test split was scored
    test            `SetScores` of the test set: UAR / WA / macro-F1 with intervals, per-class
                    recall, confusion, breakdowns, calibration, the test manifest's hash
    cross_corpus    `SetScores` per held-out corpus; `cross_corpus_mean_uar` their mean
    dimensions      optional, a model with a dimensional head: `DimensionScores` (CCC of arousal /
                    valence[ / dominance] per scored set and corpus, the `weak_labels` flag;
                    written through `stages.evaluate_dimensions.dimensions_section`)

Every score is written once (DVC shows `test.uar`). Writer: `affectflow.stages.evaluate` through
`write_evaluation`; readers (the register tail, the registry's gate inputs, the studies, the
Kubeflow reports, the model card) go through `read_evaluation`, so a field is named here only.

Optional sections: a typed optional section is one field on `Evaluation` (or `SetScores`),
`name: Section | None = None`. A section this reader does not know yet (a JSON object written by a
newer writer) is kept, readable as `extra_sections()`, and written back unchanged; an unknown
field that is not an object is an error naming the file and the field, as a wrong type is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from affectflow.contracts.json_file import UNKNOWN_FIELD, parse_model, read_json_file
from affectflow.storage import atomic_write_json

FORMAT_VERSION = 2
LEGACY_HEADLINE = ("uar", "wa", "macro_f1", "per_class_recall", "collapsed", "test_manifest_hash")
"""Format 1 wrote these at the top level too (copies of `test`'s); they are dropped on reading."""



class EvaluationError(ValueError):
    """A metrics.json that cannot be used; the message names the file and the field."""


class EvaluationMismatch(EvaluationError):
    """An evaluation that was not computed for the model it is being used for."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sections(BaseModel):
    """Known fields strict; an unknown JSON object is an optional section of a newer writer, kept."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _only_sections(self) -> _Sections:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, Mapping):
                raise ValueError(f"{UNKNOWN_FIELD}{key} is not known (an unknown section must be an object)")
        return self

    def extra_sections(self) -> dict[str, dict[str, Any]]:
        """Sections of a newer writer this reader has no type for, as written."""
        return {k: dict(v) for k, v in (self.model_extra or {}).items()}


class Collapse(_Strict):
    collapsed: bool
    reasons: list[str] = Field(default_factory=list)
    prediction_share: dict[str, float] = Field(default_factory=dict)


class CalibrationScores(BaseModel):
    """Expected calibration error of the top label before (plain softmax) and after the model's
    temperature. Numbers only; a newer writer's extra numbers are kept."""

    model_config = ConfigDict(extra="allow")

    temperature: float
    bins: int
    accuracy: float
    ece_before: float
    ece_after: float
    mean_confidence_before: float
    mean_confidence_after: float


class Headline(BaseModel):
    """The headline scores of any scored clips: how many, UAR (with its interval), WA, macro-F1."""

    n: int
    uar: float
    wa: float
    macro_f1: float
    uar_ci_low: float | None = None
    uar_ci_high: float | None = None


class GroupScores(Headline, _Strict):
    """One group of a breakdown (a speaker, a gender, a corpus)."""


class SetScores(Headline, _Sections):
    """The scores of one scored set (the test split, or one held-out corpus)."""

    wa_ci_low: float | None = None
    wa_ci_high: float | None = None
    macro_f1_ci_low: float | None = None
    macro_f1_ci_high: float | None = None
    per_class_recall: dict[str, float | None]
    """Recall per class of the evaluation class set; null: the class is absent from this set."""
    test_manifest_hash: str
    """Hash of the scored rows: which set (the gate compares like with like)."""
    classes: list[str] = Field(default_factory=list)
    confusion: list[list[int]] = Field(default_factory=list)
    """Rows = reference class, columns = predicted, in `classes` order."""
    predicted_over: list[str] = Field(default_factory=list)
    classes_present: list[str] = Field(default_factory=list)
    chance_uar: float | None = None
    ci_level: float | None = None
    prediction_histogram: dict[str, int] = Field(default_factory=dict)
    collapse: Collapse | None = None
    per_speaker: dict[str, GroupScores] = Field(default_factory=dict)
    per_gender: dict[str, GroupScores] = Field(default_factory=dict)
    per_corpus: dict[str, GroupScores] = Field(default_factory=dict)
    calibration: CalibrationScores | None = None
    scope: str | None = None
    """The test set only: which rows (a test split, or pooled held-out corpora)."""
    synthetic_data: bool = False
    rows: str | None = None
    """A held-out corpus only: which of its clips were scored."""
    dropped_labels: dict[str, int] = Field(default_factory=dict)

    def recalls(self) -> dict[str, float]:
        """Per-class recall of the classes present in the set."""
        return {c: r for c, r in self.per_class_recall.items() if r is not None}


class ScoredModel(_Strict):
    """Which model was scored: the registry refuses to pair an evaluation with any other model."""

    content_hash: str
    mlflow_run_id: str | None = None
    dir: str = ""
    arch: str = ""

    def describe(self) -> str:
        return f"model {self.content_hash[:12]}" + (f" (MLflow run {self.mlflow_run_id})" if self.mlflow_run_id else "")

    def matches(self, other: ScoredModel) -> bool:
        """Same content, and the same run when both name one."""
        return self.content_hash == other.content_hash and (
            not self.mlflow_run_id or not other.mlflow_run_id or self.mlflow_run_id == other.mlflow_run_id)


class DimensionScore(_Strict):
    """Concordance correlation coefficient of one dimension on one group, with its bootstrap
    interval; `ccc` null: not computable (fewer than two targets, or constant ones)."""

    n: int
    ccc: float | None = None
    ccc_ci_low: float | None = None
    ccc_ci_high: float | None = None


class DimensionSetScores(DimensionScore):
    """One dimension on one scored set: pooled, and per corpus."""

    per_corpus: dict[str, DimensionScore] = Field(default_factory=dict)


class DimensionScores(_Strict):
    """The dimensional head's scores (metrics.json `dimensions`). Whoever shows a CCC shows
    `weak_labels` beside it: weak targets (a class's circumplex point) are not annotations."""

    names: list[str]
    weak_labels: bool
    """Some scored target came from the categorical label, not from annotation."""
    model_weak_labels: bool = False
    """The model was trained on weak targets (model.json `dimensions.weak_labels`)."""
    label_sources: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Per scored corpus, per dimension: where its targets came from (a column, or weak)."""
    ci_level: float = 0.95
    sets: dict[str, dict[str, DimensionSetScores]] = Field(default_factory=dict)
    """Per scored set (`test`, `cross:<corpus>`), per dimension."""

    def test_ccc(self) -> dict[str, float]:
        """CCC of each dimension on the test set (those that could be computed)."""
        return {name: r.ccc for name, r in self.sets.get("test", {}).items() if r.ccc is not None}


class Evaluation(_Sections):
    """metrics.json."""

    format: int = FORMAT_VERSION
    model: ScoredModel
    corpora: list[str] = Field(default_factory=list)
    test: SetScores
    cross_corpus: dict[str, SetScores] = Field(default_factory=dict)
    cross_corpus_mean_uar: float | None = None
    dimensions: DimensionScores | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _from_legacy(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """Format 1 (no `format`): the headline scores also at the top level, the model's folder and
    arch beside `model`. The copies are dropped; a copy that disagrees with `test` is an error."""
    out = dict(data)
    test = out.get("test")
    for key in LEGACY_HEADLINE:
        if key in out and isinstance(test, Mapping):
            value = out.pop(key)
            inner = test.get(key, value) if key != "collapsed" else (test.get("collapse") or {}).get(key, value)
            if inner != value:
                raise EvaluationError(f"{where}: field '{key}' ({value!r}) differs from 'test.{key}' ({inner!r})")
    model = out.get("model")
    if isinstance(model, Mapping):
        out["model"] = {**model, **{k: str(out.pop(f)) for k, f in (("dir", "model_dir"), ("arch", "arch")) if f in out}}
    return out


def parse_evaluation(data: Any, where: str | Path) -> Evaluation:
    """metrics.json content -> Evaluation; errors name the file and the field."""
    where = Path(where)
    if not isinstance(data, dict):
        raise EvaluationError(f"{where}: top level must be an object")
    if "model" not in data:
        raise EvaluationMismatch(f"{where}: field 'model' missing: the evaluation does not say which model it "
                                 "scored, so it cannot be used for any model (re-run `affectflow evaluate`)")
    if "format" not in data:
        data = _from_legacy(data, where)
    return parse_model(Evaluation, data, where, EvaluationError)


def evaluation_file(path: str | Path) -> Path:
    """metrics.json of an evaluation given as its folder or as the file itself."""
    from affectflow.contracts.workdir import METRICS_FILE

    p = Path(path)
    return p / METRICS_FILE if p.is_dir() else p


def read_evaluation(path: str | Path) -> Evaluation:
    """The evaluation in `path` (evaluate's folder or its metrics.json)."""
    f = evaluation_file(path)
    data = read_json_file(f, EvaluationError, "metrics file not found (run `affectflow evaluate`)")
    return parse_evaluation(data, f)


def write_evaluation(path: str | Path, evaluation: Evaluation) -> Path:
    """Write metrics.json atomically (the one writer: the evaluate stage)."""
    atomic_write_json(path, evaluation.to_json())
    return Path(path)


def folder_model(model_dir: str | Path) -> ScoredModel:
    """The identity of a model folder on disk (its content hash, the MLflow run in its model.json)."""
    from affectflow.contracts.model_folder import content_hash, read_model_meta

    meta = read_model_meta(model_dir)
    return ScoredModel(content_hash=content_hash(model_dir), mlflow_run_id=(meta.mlflow or {}).get("run_id"),
                       dir=str(model_dir), arch=meta.arch)


def check_evaluation(evaluation: Evaluation, where: str | Path, model_dir: str | Path) -> ScoredModel:
    """The model folder's identity, after checking that `evaluation` (read from `where`) scored it."""
    actual = folder_model(model_dir)
    if not evaluation.model.matches(actual):
        raise EvaluationMismatch(f"{where} is an evaluation of {evaluation.model.describe()}, but {model_dir} is "
                                 f"{actual.describe()}: refusing to use one model's scores for another; "
                                 f"re-run `affectflow evaluate --model {model_dir}`")
    return actual
