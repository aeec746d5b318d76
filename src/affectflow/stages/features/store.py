"""The deployment's feature store (`features.store`): every run reads it before computing, like
`features.previous`, and a complete run (a local run, or the cluster's gather task) adds to it the
shards it lacks, record last (`publish`). Shards are named by their clips, so runs and pipelines
share it without coordination, and each pipeline run's output stays a self-contained store of its
own (copied in, or hard-linked where both are local folders)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from affectflow.config import Params
from affectflow.contracts.feature_store import RECORD_SUFFIX, SHARD_SUFFIX, ShardRecord
from affectflow.storage import atomic_path
from affectflow.storage.s3 import is_s3


def store_location(params: Params) -> str | None:
    """Where the deployment's shared store is (`features.store`: relative = under paths.workdir);
    None when it is off."""
    store = params.features.store
    if not store:
        return None
    if is_s3(store) or Path(store).is_absolute():
        return store
    workdir = params.paths.workdir
    return f"{workdir.rstrip('/')}/{store}" if is_s3(workdir) else str(Path(workdir) / store)


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` as `src`'s bytes, by an atomic rename: a hard link where both are on one filesystem (a
    local store shares its shards with each run's output), else a copy."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def publish(params: Params, root: Path, keys: dict[str, str], found: dict[str, dict[str, ShardRecord]]) -> int:
    """Add the shards of `root` that the deployment's store lacks (shard, then record: a store never
    holds a record without its shard); returns how many. A store that is `root` itself is left alone."""
    target = store_location(params)
    if target is None:
        return 0
    files = sorted({r.file for kind in keys for r in found[kind].values()})
    if is_s3(target):
        from affectflow.storage.s3 import store_for

        s3 = store_for(params)
        base = target.rstrip("/")
        held = {o.key for o in s3.list(base)}
        prefix = base.split("/", 3)[3] + "/" if base.count("/") >= 3 else ""
        new = [f for f in files if prefix + str(Path(f).with_suffix(RECORD_SUFFIX)) not in held]
        for f in new:
            for suffix in (SHARD_SUFFIX, RECORD_SUFFIX):
                s3.upload(root / Path(f).with_suffix(suffix), f"{base}/{Path(f).with_suffix(suffix)}")
        return len(new)
    dest = Path(target)
    if dest.resolve() == root.resolve():
        return 0
    new = [f for f in files if not (dest / f).with_suffix(RECORD_SUFFIX).is_file()]
    for f in new:
        for suffix in (SHARD_SUFFIX, RECORD_SUFFIX):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy((root / f).with_suffix(suffix), (dest / f).with_suffix(suffix))
    return len(new)
