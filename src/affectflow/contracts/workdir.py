"""The workdir layout: where each stage's output lives under `paths.workdir`, named once.

Every artifact that passes between stages has a name (`manifest`, `features`, `synthetic`,
`encoder`, `model`, `evaluation`, `rescore`, `registration`) and a place: the folder of the stage
that writes it plus a path
inside it. The CLI's defaults, DVC's stages and `affectflow step` all take paths from here, so
moving a file is one edit. (The Kubeflow DAG hands artifacts between tasks itself; inside a task
the same names point into the task's artifact folders.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST_FILE = "manifest.parquet"
MODEL_SUBDIR = "model"
"""The model folder inside the train stage's output."""
ENCODER_SUBDIR = "encoder"
"""The DANN encoder (a model folder) inside the pretrain stage's output."""
METRICS_FILE = "metrics.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Artifact:
    """An artifact one stage writes and later stages read."""

    stage: str
    """Output folder of the stage that writes it, under the workdir."""
    inner: str = ""
    """Path inside that folder ("" = the folder itself)."""


ARTIFACTS: dict[str, Artifact] = {
    "manifest": Artifact("ingest", MANIFEST_FILE),
    "gate": Artifact("validation"),
    "features": Artifact("features"),
    "synthetic": Artifact("augment"),
    "encoder": Artifact("pretrain", ENCODER_SUBDIR),
    "model": Artifact("train", MODEL_SUBDIR),
    "evaluation": Artifact("evaluate"),
    "rescore": Artifact("rescore"),
    "registration": Artifact("register"),
}


@dataclass(frozen=True)
class Workdir:
    """Paths of one workdir (a local folder)."""

    root: Path

    def stage_dir(self, folder: str) -> Path:
        return self.root / folder

    def artifact(self, name: str) -> Path:
        try:
            a = ARTIFACTS[name]
        except KeyError:
            raise KeyError(f"unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}") from None
        return self.root / a.stage / a.inner if a.inner else self.root / a.stage

    @property
    def manifest(self) -> Path:
        return self.artifact("manifest")

    @property
    def features(self) -> Path:
        return self.artifact("features")

    @property
    def model(self) -> Path:
        return self.artifact("model")

    @property
    def metrics(self) -> Path:
        return self.artifact("evaluation") / METRICS_FILE


SKIPPED = "SKIPPED"
"""Marker file in the output of a switched-off stage (no augmentation / no DANN): a folder that
exists, so DVC and Kubeflow see an output, but that later stages treat as absent."""


def write_skipped(folder: str | Path, reason: str) -> Path:
    """An empty stage output with a SKIPPED note: what a switched-off stage leaves behind."""
    from affectflow.storage import atomic_dir

    with atomic_dir(folder) as tmp:
        (tmp / SKIPPED).write_text(reason + "\n")
    return Path(folder)


def optional_dir(folder: str | Path, inner: str = "") -> Path | None:
    """`folder` (or `inner` inside it), or None when it is missing or a switched-off placeholder."""
    path = Path(folder)
    if (path / SKIPPED).exists() or not path.exists():
        return None
    return path / inner if inner else path
