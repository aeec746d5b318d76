"""Which MLflow store a process talks to, decided in one place.

MLflow keeps its tracking and registry URIs process-wide (and exports them to the environment for
subprocesses), so every part of affectflow that talks to MLflow goes through here:

- `resolve_uri`: a configured URI made independent of later `chdir`s (relative sqlite files and
  bare folders become absolute); it creates nothing, so a read-only command never leaves a store
  behind;
- `ensure_store`: creates a local sqlite file's folder, for the writers (training, registration);
- `mlflow_scope`: tracking and registry on one URI inside a block, as before after it;
- `client`: an MlflowClient with tracking and registry on the same store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
SQLITE = "sqlite:///"


def resolve_uri(uri: str) -> str:
    """`sqlite:///rel/path.db` and bare paths are made absolute (a bare `*.db` is a sqlite store,
    any other bare path a file store); `http(s)://`, `databricks` and absolute URIs pass through."""
    if uri.startswith(SQLITE):
        db = uri[len(SQLITE):]
        if db == ":memory:" or db.startswith("/"):
            return uri
        return SQLITE + str(Path(db).resolve())
    if "://" not in uri and uri != "databricks":
        path = Path(uri).resolve()
        return SQLITE + str(path) if path.suffix == ".db" else path.as_uri()
    return uri


def local_sqlite(uri: str) -> Path | None:
    """The database file of a local sqlite URI (resolved), else None."""
    uri = resolve_uri(uri)
    if uri.startswith(SQLITE) and not uri.endswith(":memory:"):
        return Path(uri[len(SQLITE):])
    return None


def ensure_store(uri: str) -> str:
    """`resolve_uri`, creating the folder of a local sqlite file (writers only). A store the
    writer cannot write (a read-only file, folder or mount) is refused at once: sqlite would
    otherwise retry its locks for minutes and end in a traceback."""
    db = local_sqlite(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        target = db if db.exists() else db.parent
        if not os.access(target, os.W_OK) or not os.access(db.parent, os.W_OK):
            raise PermissionError(f"tracking.uri {resolve_uri(uri)}: {target} is read-only here; writers need write "
                                  "access to the sqlite file and its folder (its journal is written beside it)")
    return resolve_uri(uri)


def resolve_artifact_location(location: str) -> str:
    return location if "://" in location else Path(location).resolve().as_uri()


def experiment_artifact_location(tracking_uri: str, location: str) -> str | None:
    """Where a new experiment's artifacts go: `location` for a local store; for a tracking server
    (http(s)://, databricks) a local path would be this process's own disk (a pod's, on a cluster:
    lost with it, so no one could load the model), so None lets the server choose (its
    `--artifacts-destination`); an explicit remote URI (s3://, mlflow-artifacts:/) is kept."""
    if not location:
        return None
    remote_store = tracking_uri.startswith(("http://", "https://")) or tracking_uri == "databricks"
    if remote_store and "://" not in location and not location.startswith("mlflow-artifacts:"):
        return None
    return resolve_artifact_location(location)


@contextlib.contextmanager
def mlflow_scope(uri: str) -> Iterator[str]:
    """MLflow tracking and registry on `uri` inside the block, exactly as before after it (process
    state and the exported environment variables), so one library call cannot redirect later runs
    or servers started later."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    resolved = resolve_uri(uri)
    env = {k: os.environ.get(k) for k in (TRACKING_ENV, REGISTRY_ENV)}
    tracking_before, registry_before = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    try:
        yield resolved
    finally:
        tracking_state._tracking_uri = tracking_before
        registry_state._registry_uri = registry_before
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(uri: str) -> Any:
    """An MlflowClient on `uri` for both tracking and registry."""
    from mlflow import MlflowClient

    resolved = resolve_uri(uri)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)
