"""The shard plan: which clips each kind lacks (in this store, `features.previous` and the
deployment's store), dealt
round-robin over the duration order into shards."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.feature_store import (
    RECORD_SUFFIX,
    SHARD_SUFFIX,
    ShardRecord,
    catalogue,
    shard_folder,
)
from affectflow.contracts.manifest import ManifestError, read_manifest
from affectflow.features.keys import KINDS, LOGMEL, SSL, feature_keys
from affectflow.features.robustness import split_kind
from affectflow.stages.features.store import link_or_copy, store_location
from affectflow.stages.features.worker import _Job
from affectflow.storage.s3 import is_s3

log = logging.getLogger(__name__)


class FeaturesError(RuntimeError):
    """The features stage cannot go on; the message names the file or key."""


# ----------------------------------------------------------------------------- the shard plan
def _read_clips(manifest_path: Path) -> pd.DataFrame:
    df = read_manifest(manifest_path)
    sha = df["sha256"].astype("string")
    bad = ~sha.str.fullmatch(r"[0-9a-f]{64}").fillna(False).astype(bool)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ManifestError(f"{manifest_path}: row {i} ({df['utt_id'].iloc[i]}): field sha256 is not a "
                            f"hex SHA-256 ('{df['sha256'].iloc[i]}'); re-run ingest")
    if df["utt_id"].duplicated().any():
        dup = df.loc[df["utt_id"].duplicated(), "utt_id"].iloc[0]
        raise ManifestError(f"{manifest_path}: field utt_id: duplicate '{dup}'")
    return df


SMILE_CHUNK = 4
"""Clips per worker task when no log-mel is computed (openSMILE gains nothing from batching)."""

SHARD_CLIPS = 1000
"""Clips per shard when `features.shards` is 0 (auto): a ComParE shard is then ~25 MB, a log-mel
one ~80 MB, and a 3,000-clip manifest makes 3 shards, a 300-hour one a few hundred."""


def shard_count(params: Params, clips: int) -> int:
    """How many shards `clips` new clips are cut into: `features.shards`, or one per `SHARD_CLIPS`."""
    n = params.features.shards or math.ceil(clips / SHARD_CLIPS)
    return max(1, min(n, clips)) if clips else 0


def _plan_shards(jobs: list[_Job], n: int) -> list[list[_Job]]:
    """Deal the duration-sorted jobs round-robin: every shard gets the same mix of long and short
    clips, so shards (and the pods that compute them) take about the same time."""
    return [jobs[i::n] for i in range(n)] if n else []


@dataclass
class _Plan:
    """What a run computes: the cached shards it found, the clips each kind still lacks, the jobs
    dealt into shards."""

    keys: dict[str, str]
    clips: pd.DataFrame
    found: dict[str, dict[str, ShardRecord]]
    missing: dict[str, set[str]]
    jobs: list[_Job]
    """The clips some kind lacks, longest first."""
    shards: list[list[_Job]]
    refused: list[str]


def _source_root(source: str | Path, folder: str, params: Params) -> Path | None:
    """A previous store as a local folder: itself, or its s3:// shards of `folder` mirrored locally
    (whole shards: one GET each); None when it has none."""
    if not is_s3(str(source)):
        return Path(source)
    from affectflow.storage.s3 import localize_for, store_for

    uri = f"{str(source).rstrip('/')}/{folder}"
    if not store_for(params).list(uri):
        return None
    return localize_for(params, uri).parents[folder.count("/")]


def _reuse(root: Path, sources: Sequence[str | Path], kind: str, key: str, wanted: set[str],
           found: dict[str, ShardRecord], params: Params, copy: bool) -> None:
    """Add to `found` the clips earlier stores hold; `copy`: bring their shards into this store
    (record last, so a half copy is a half shard), else only note them (a scale-out task, which
    computes the rest and leaves the copying to the gather)."""
    for source in sources:
        src = _source_root(source, shard_folder(kind, key), params)
        if src is None or src.resolve() == root.resolve():
            continue
        held, _ = catalogue(src, kind, key)
        records = {r.file: r for c, r in held.items() if c in wanted and c not in found}
        for record in records.values():
            dst = root / record.file
            if copy and not dst.with_suffix(RECORD_SUFFIX).is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                for suffix in (SHARD_SUFFIX, RECORD_SUFFIX):
                    link_or_copy((src / record.file).with_suffix(suffix), dst.with_suffix(suffix))
            for clip in record.shapes:
                found.setdefault(clip, record)


def plan(params: Params, manifest_path: str | Path, root: Path,
         previous: Sequence[str | Path] = (), copy: bool = True) -> _Plan:
    """The shards already there (this store, then `previous` stores, `features.previous` and the
    deployment's store), the clips each kind lacks, and those clips dealt into `shard_count` shards."""
    df = _read_clips(Path(manifest_path))
    keys = feature_keys(params)
    if not keys:
        raise FeaturesError("features.kinds / features.egemaps.levels: no feature kind requested")
    clips = df.drop_duplicates("sha256").sort_values("duration", ascending=False, kind="stable")
    wanted = set(clips["sha256"])
    shared = store_location(params)
    sources = [*previous, *([params.features.previous] if params.features.previous else []),
               *([shared] if shared else [])]
    found: dict[str, dict[str, ShardRecord]] = {}
    refused: list[str] = []
    for kind, key in keys.items():
        found[kind], bad = catalogue(root, kind, key)
        for line in bad:
            log.warning("features: %s; its clips are computed again", line)
            for suffix in (SHARD_SUFFIX, RECORD_SUFFIX):
                Path(line.split(": ", 1)[0]).with_suffix(suffix).unlink(missing_ok=True)
        refused += bad
        _reuse(root, sources, kind, key, wanted, found[kind], params, copy)
    missing = {kind: wanted - set(found[kind]) for kind in keys}
    jobs: list[_Job] = []
    for sha, path, corpus in zip(clips["sha256"], clips["path"], clips["corpus"].astype(str), strict=True):
        smile = tuple(k for k in keys if KINDS[split_kind(k)[0]].engine == "smile" and sha in missing[k])
        want_logmel = LOGMEL in keys and sha in missing[LOGMEL]
        want_ssl = SSL in keys and sha in missing[SSL]
        if want_logmel or smile or want_ssl:
            jobs.append((sha, str(path), want_logmel, smile, corpus))
    return _Plan(keys, df, found, missing, jobs, _plan_shards(jobs, shard_count(params, len(jobs))), refused)


def shards_to_compute(params: Params, manifest_path: str | Path, store: str | Path | None = None) -> int:
    """How many shards a run on this manifest computes (what a cluster run fans out over): the
    clips that neither `store` nor `features.previous` holds, cut into `shard_count` shards."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return len(plan(params, manifest_path, Path(store) if store else Path(tmp), copy=False).shards)
