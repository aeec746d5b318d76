"""Lineage: which data, code and configuration made an artifact — computed in this one module.

`lineage()` gives the tags every MLflow run, model folder and registry version carries:
`manifest_hash` (content of the manifest rows), `feature_config_hash`, `params_hash` (of the
sections the stage reads), `git_commit` / `git_dirty`, `dvc_revision` (one meaning everywhere:
"which version of the data", see `dvc_revision()`), and the md5s that dvc.lock records for the
manifest and feature folders when they are DVC outputs. `data_fingerprint()` is a quick stamp of
the corpus roots (file stats; object listings under s3:// prefixes); the pipeline's data-stamp task
computes it in every run and hands it to ingest, so a cached ingest (keyed on its inputs) is
reused only while the data is unchanged.
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
    """A stamp of every corpus root as it is now, 16 hex digits: local files by relative path, size
    and mtime; s3:// roots by the key, size and ETag of every object under the prefix.

    Cheap enough to compute on every run (no file is read; a bucket is listed, 1000 keys a
    request), so a recurring pipeline run can tell new data from old without anyone editing it.
    """
    h = hashlib.sha256()
    for spec in params.ingest.corpora:
        root = params.corpus_root(spec)
        h.update(f"{spec.name}\0{root}\0".encode())
        if root.startswith("s3://"):
            from affectflow.storage.s3 import store_for

            for obj in store_for(params).list(root):
                h.update(f"{obj.key}\0{obj.size}\0{obj.etag}\n".encode())
            continue
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
