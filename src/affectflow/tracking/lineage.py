"""Lineage: which data, code and configuration made an artifact — computed in this one module.

`lineage()` gives the tags every MLflow run, model folder and registry version carries:
`manifest_hash` (content of the manifest rows), `feature_config_hash`, `params_hash` (of the
sections the stage reads), `git_commit` / `git_dirty`, `dvc_revision` (one meaning everywhere:
"which version of the data", see `dvc_revision()`), and the md5s that dvc.lock records for the
manifest and feature folders when they are DVC outputs. `data_fingerprint()` is a quick stat-based
stamp of the corpus folders; the pipeline passes it to the ingest task so that a cached ingest
(keyed on its inputs) is invalidated when the audio on disk changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from affectflow.config import Params
from affectflow.contracts.manifest import manifest_hash
from affectflow.tracking.revisions import dvc_revision, git_commit, locked_md5


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


def params_hash(params: Params, sections: Sequence[str] | None = None) -> str:
    """Hash of the given params sections (default: all of them)."""
    names = list(sections) if sections is not None else list(type(params).model_fields)
    payload = json.dumps({s: getattr(params, s).model_dump(mode="json") for s in names}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def lineage(params: Params, manifest: pd.DataFrame, manifest_path: str | Path, features_dir: str | Path,
            sections: Sequence[str] | None = None) -> dict[str, str]:
    """Tags that say which data and configuration made an artifact (`sections`: the ones the stage
    reads, whose hash is `params_hash`)."""
    return {
        "manifest_hash": manifest_hash(manifest),
        "feature_config_hash": params.section_hash("features", "audio"),
        "params_hash": params_hash(params, sections),
        **git_commit(),
        "dvc_revision": dvc_revision() or "",
        **locked_md5({"manifest": manifest_path, "features": features_dir}),
    }
