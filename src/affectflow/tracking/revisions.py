"""Which revision of the code and the data is at hand: git commit and DVC revision, read from the
repository (or from the environment where there is none, as in a container). No params involved.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

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


def git_commit(cwd: str | Path = ".") -> dict[str, str]:
    """HEAD commit and whether the work tree differs from it (`AFFECTFLOW_GIT_COMMIT` wins: images
    and pipeline tasks have no repository)."""
    env = os.environ.get("AFFECTFLOW_GIT_COMMIT")
    if env:
        return {"git_commit": env, "git_dirty": ""}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "", "git_dirty": ""}
    return {"git_commit": head, "git_dirty": str(bool(dirty)).lower()}


def locked_md5(paths: Mapping[str, str | Path], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 that dvc.lock records for the given data paths (e.g. manifest, features), when locked:
    `dvc_<name>_md5` tags."""
    lock_path = Path(lock)
    if not lock_path.is_file():
        return {}
    data = _read_yaml(lock_path)
    stages = (data or {}).get("stages", {}) if isinstance(data, dict) else {}
    wanted = {str(Path(p).resolve()): name for name, p in paths.items()}
    out: dict[str, str] = {}
    for stage in stages.values():
        for o in stage.get("outs", []) or []:
            name = wanted.get(str(Path(o.get("path", "")).resolve()))
            if name and o.get("md5"):
                out[f"dvc_{name}_md5"] = str(o["md5"])
    return out


