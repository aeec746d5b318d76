"""Which data a run used: the DVC revision for MLflow tags and a cheap fingerprint for cache keys.

`dvc_revision()` answers "which version of the data" the way DVC records it, so an MLflow run or
registry version can be traced back to `dvc checkout`-able data. `data_fingerprint()` is a quick
stat-based stamp of the corpus folders; the pipeline passes it to the ingest task so that a cached
ingest (keyed on its inputs) is invalidated when the audio on disk changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from affectflow.config import Params

INGEST_STAGE = "ingest"
"""The dvc.yaml stage whose output (the manifest folder) identifies the data a model was trained on."""


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _lock_revision(lock: Path) -> str | None:
    """md5 DVC recorded for the ingest stage's output (the manifest folder) in dvc.lock."""
    data = _read_yaml(lock)
    if not isinstance(data, dict):
        return None
    stage = (data.get("stages") or {}).get(INGEST_STAGE) or {}
    hashes = sorted(str(o.get("md5")) for o in stage.get("outs") or [] if isinstance(o, dict) and o.get("md5"))
    return "+".join(hashes) or None


def _dvc_file_revision(root: Path) -> str | None:
    """md5s of corpora added with `dvc add` (`*.dvc` files at the top level and under data/)."""
    hashes: list[str] = []
    for f in sorted([*root.glob("*.dvc"), *root.glob("data/**/*.dvc")]):
        data = _read_yaml(f)
        for out in (data or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("md5"):
                hashes.append(f"{f.stem}:{out['md5']}")
    return "+".join(hashes) or None


def _git_lock_blob(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD:dvc.lock"], cwd=root, capture_output=True,
                             text=True, check=False)
    except OSError:  # no git (e.g. in a container image)
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def dvc_revision(root: str | Path = ".") -> str | None:
    """The DVC revision of the data in the repository at `root`, or None when DVC knows nothing.

    In order: the md5 of the ingest output in `dvc.lock` (content hash of the manifest folder, which
    lists every clip's sha256 and split; prefixed `dvc.lock:`), the md5s of `dvc add`-ed corpora
    (`*.dvc` files; prefixed `dvc:`), then the git blob of the committed dvc.lock (`git:`).
    `AFFECTFLOW_DVC_REV` in the environment wins (set it where the repository is not at hand,
    e.g. in a Kubeflow task).
    """
    env = os.environ.get("AFFECTFLOW_DVC_REV")
    if env:
        return env
    base = Path(root)
    lock = base / "dvc.lock"
    if lock.is_file():
        rev = _lock_revision(lock)
        if rev:
            return f"dvc.lock:{rev}"
    rev = _dvc_file_revision(base)
    if rev:
        return f"dvc:{rev}"
    blob = _git_lock_blob(base)
    return f"git:{blob}" if blob else None


def data_fingerprint(params: Params) -> str:
    """A stat-based stamp (relative path, size, mtime) of every local corpus folder, 16 hex digits.

    Cheap enough to compute on every run (no file is read). Remote roots (s3://) contribute only
    their URI: their content cannot be stamped without listing the bucket.
    """
    h = hashlib.sha256()
    for spec in params.ingest.corpora:
        root = params.corpus_root(spec)
        h.update(f"{spec.name}\0{root}\0".encode())
        if "://" in root:
            continue
        base = Path(root)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(base) if p != base else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
