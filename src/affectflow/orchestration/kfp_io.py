"""The task runner of the Kubeflow components: a task's configuration in, its stage run, its
artifact folders out.

The components in `components/` are thin: each imports this module inside its body (the body is
all that travels into the container) and calls `run_task(stage, config, inputs, out)`: `Params`
from the configuration string the resolve-params task handed it, the stage's `run` from the stage
table. What the UI shows is `kfp_reports`; MLflow inside a pod is `kfp_tracking`. Keeping this
here, not in the component bodies, means it is imported, linted and unit-tested like the rest of
the library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from affectflow.config import ConfigError, Params, params_from_tree, params_yaml
from affectflow.contracts.workdir import optional_dir, write_skipped
from affectflow.orchestration.kfp_tracking import preflight, tracking_from_env
from affectflow.storage import atomic_write_json, atomic_write_text


# ----------------------------------------------------------------------------- configuration
def resolve_params(base: str, values: Mapping[str, Any], params_path: str | Path) -> tuple[str, ...]:
    """The resolve-params task: validate the run's parameters once (`run_form.resolve`), check that
    the tracking server the run will log to is there (`preflight`), write the full params.yaml
    artifact, return one configuration string per stage (`STAGES` order)."""
    from affectflow.orchestration.run_form import resolve, stage_configs

    params = resolve(base, values)
    preflight()
    atomic_write_text(params_path, params_yaml(params))
    return tuple(stage_configs(params).values())


def stage_params(config: str, stage: str) -> Params:
    """Params from a stage's configuration string (sections it does not read keep their defaults)."""
    try:
        tree = json.loads(config)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{stage}: configuration is not JSON ({e})") from None
    return tracking_from_env(params_from_tree(tree, f"{stage} task configuration"))


def run_task(stage: str, config: str, inputs: Mapping[str, str | Path | None], out_dir: str | Path,
             **options: Any) -> Any:
    """What a stage component does: its params from `config`, the stage's `run` on `inputs`
    (None = a switched-off branch's placeholder, left out) into `out_dir`; `options` are the
    stage's run options that are not settings (the register stage's `data_version`)."""
    from affectflow.stages import get

    params = stage_params(config, stage)
    given = {k: Path(v) for k, v in inputs.items() if v is not None}
    return get(stage).run(params, given, Path(out_dir), **options)


def stage_enabled(stage: str, config: str) -> bool:
    """Whether stage `stage` is switched on in a task configuration (its row's `switch`)."""
    from affectflow.stages import get

    return get(stage).enabled(stage_params(config, stage))


def feature_plan_task(config: str, manifest: str | Path) -> list[int]:
    """The plan-features task: shard numbers 0..n-1 of the clips the manifest still needs."""
    from affectflow.stages.features import shards_to_compute

    return list(range(shards_to_compute(stage_params(config, "features"), manifest)))


def feature_shard_task(config: str, manifest: str | Path, shard: int, out_dir: str | Path) -> dict[str, Any]:
    """A feature-shard task: shard `shard` of the same plan, into its own folder."""
    from affectflow.stages.features import extract_features

    return extract_features(stage_params(config, "features"), manifest, out_dir, shard=shard).summary


def features_gather_task(config: str, manifest: str | Path, parts: list[str], out_dir: str | Path) -> Any:
    """The features task: the shard tasks' shards (and `features.previous`'s) into one store with
    its index; a clip no shard holds (e.g. a failed plan) is computed here."""
    from affectflow.stages.features import extract_features

    return extract_features(stage_params(config, "features"), manifest, out_dir, previous=parts)


def data_stamp_task(config: str, data_version: str) -> str:
    """The data-stamp task (never cached): what ingest's cache is keyed on. The corpus roots'
    fingerprint (`lineage.data_fingerprint`: local files by path, size and mtime; s3:// prefixes by
    key, size and ETag), after the run form's `data_version` label when one is given; so a
    recurring run re-ingests exactly when objects under the corpus prefix changed."""
    from affectflow.tracking.lineage import data_fingerprint

    stamp = data_fingerprint(stage_params(config, "ingest"))
    return f"{data_version}@{stamp}" if data_version else stamp


# ----------------------------------------------------------------------------- switched-off branches
def mark_skipped(artifact: Any, reason: str) -> None:
    """Placeholder output artifact of a switched-off branch (no augmentation / no DANN)."""
    write_skipped(artifact.path, reason)
    artifact.metadata["skipped"] = True


def optional_input(artifact: Any, inner: str = "") -> Path | None:
    """The artifact's folder (or `inner` inside it), or None when the branch that made it was off."""
    return optional_dir(artifact.path, inner)


def write_result(path: str | Path, result: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(result))


def read_json(path: str | Path) -> Any:
    """A JSON file another task wrote; the error names the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None


# ----------------------------------------------------------------------------- models and evaluation
MODEL_SUBDIR = "model"
"""Train writes its model folder here inside the task's Model artifact (`train/model/`)."""


def model_dir(artifact: Any) -> Path:
    """The model folder inside a train task's Model artifact."""
    sub = (getattr(artifact, "metadata", None) or {}).get("model_dir") or MODEL_SUBDIR
    return Path(artifact.path) / sub


