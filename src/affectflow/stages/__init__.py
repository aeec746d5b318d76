"""The stage table: the training DAG's stages, in order, each declared once.

Adding a stage: write `affectflow/stages/<name>.py` with `run(params, inputs, out_dir)`, add its
row here, add its Kubeflow component in `components/` (and its edge in
`pipelines/train_pipeline.py`). The CLI subcommand, `affectflow step <name>`, its dvc.yaml stage
(`affectflow dvc --write`) and the configuration its pipeline task is handed follow from the row.
"""

from __future__ import annotations

from affectflow.stages.spec import Inputs, StageError, StageResult, StageSpec

_DATA = ("s3", "paths", "audio")


STAGES: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("ingest", "affectflow.stages.ingest",
              "corpora -> manifest.parquet with speaker-independent splits",
              sections=(*_DATA, "ingest", "splits"), output="ingest", extra_deps=("${paths.data_root}",)),
    StageSpec("validate", "affectflow.stages.validate.stage",
              "Great Expectations gate on the manifest (and, given --features, the feature store)",
              sections=(*_DATA, "ingest", "splits", "validation", "features"), output="validation",
              inputs=("manifest",), optional=("features",)),
    StageSpec("features", "affectflow.stages.features.stage",
              "the feature kinds the enabled stages read, into the sharded content-addressed store",
              sections=(*_DATA, "features"), output="features", inputs=("manifest",),
              derived_params=("train.model", "augment.enabled", "augment.feature", "pretrain.enabled")),
    StageSpec("augment", "affectflow.stages.augment.stage",
              "class-conditional generator: generate, score and filter synthetic samples",
              sections=(*_DATA, "ingest", "features", "augment", "tracking"), output="augment",
              inputs=("manifest", "features"), gpu=True, switch="augment.enabled", reads_features=("augment.feature", "train.model")),
    StageSpec("pretrain", "affectflow.stages.pretrain.stage",
              "DANN: domain-adversarial encoder pretraining on labelled source + unlabelled target corpora",
              sections=(*_DATA, "ingest", "features", "train", "pretrain", "tracking"), output="pretrain",
              inputs=("manifest", "features"), gpu=True, switch="pretrain.enabled", reads_features=("train.model",)),
    StageSpec("train", "affectflow.stages.train.stage",
              "train the recognizer with Ray Train",
              sections=(*_DATA, "ingest", "features", "train", "tracking"), output="train",
              inputs=("manifest", "features"), optional=("encoder", "synthetic"), gpu=True,
              outs=("model",), metrics=("summary.json",), plots=("curves.png",), reads_features=("train.model",)),
    StageSpec("evaluate", "affectflow.stages.evaluate",
              "UAR / WA / macro-F1 with CIs, per-class recall, confusion matrix, cross-corpus",
              sections=(*_DATA, "ingest", "features", "evaluate", "tracking"), output="evaluate",
              inputs=("model", "manifest", "features"), reads_features=("train.model",),
              outs=("report.md", "predictions.parquet"), metrics=("metrics.json",), plots=("confusion.png",)),
    StageSpec("rescore", "affectflow.stages.register.rescore",
              "re-score the champion on this model's test manifest when it was scored on another one",
              sections=(*_DATA, "ingest", "features", "evaluate", "registry", "tracking"), output="rescore",
              inputs=("model", "evaluation", "manifest", "features"), uses=("evaluate",),
              outs=(), metrics=("plan.json",)),
    StageSpec("register", "affectflow.stages.register.stage",
              "register the model as `challenger` and gate it against `champion` on one test set",
              sections=("registry", "tracking"), output="register", inputs=("model", "evaluation"),
              optional=("rescore",), outs=(), metrics=("result.json",)),
    StageSpec("promote", "affectflow.stages.register.promote",
              "move `champion` to the registered version when its gate passed",
              sections=("registry", "tracking"), output="promote", inputs=("registration",),
              switch="registry.auto_promote"),
)}


def get(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise StageError(f"unknown stage {name!r}; known: {', '.join(STAGES)}") from None


__all__ = ["STAGES", "Inputs", "StageError", "StageResult", "StageSpec", "get"]
