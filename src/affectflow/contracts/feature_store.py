"""Content-addressed, sharded feature store: a few large NPZ shards per (kind, configuration).

Layout of a features folder (DVC tracks it as one directory output):
  <dir>/<kind>/<config-hash>/<shard-id>.npz    one float32 array per clip, named by its sha256
  <dir>/<kind>/<config-hash>/<shard-id>.json   the shard's record: its own sha256, clips, shapes
  <dir>/index.parquet   utt_id, kind, key (config hash), file (shard, relative), shape, member
                        (the clip's sha256 inside the shard), shard_sha256
  <dir>/summary.json

The config hash (`feature_key`) covers everything that changes the values: the kind's section of
`params.features`, `audio.sample_rate` and an algorithm/library version; the member name is the
clip's file content hash from the manifest. So a re-run, or a run on a grown manifest, computes
only clips no shard holds yet, two configurations live side by side, duplicate clips share one
array, and shards from a previous store (a folder or `s3://` prefix, `features.previous`) are
reused whole.

Why a few large shards, not one `.npy` per clip: downstream tasks read whole splits, so on a
cluster one S3 GET per shard (tens of MB) replaces thousands of per-clip round trips, and DVC/S3
track tens of files instead of tens of thousands. A shard is written once by one process and never
changed: its `.npz` appears by an atomic rename, then its `.json` record (with the `.npz`'s sha256)
by another, so a shard without a record is a half shard (a killed run) and is recomputed, and a
shard whose bytes no longer match its record is named and recomputed (by the writer) or refused
(by a reader). Every array read is checked for non-finite values (the clip and shard are named).

Older stores (and small test fixtures) with one `.npy` per clip (`save_array`, `feature_path`) are
still read: an index row whose `file` is a `.npy` is that array.
Kinds and arrays: `logmel` (n_mels, frames); `egemaps` functionals (n_features,);
`egemaps_lld` (n_lld, frames); `compare` (6373,); `ssl` (layers, dim).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.storage import atomic_path, atomic_write_json

INDEX = "index.parquet"
INDEX_COLUMNS = ["utt_id", "kind", "key", "file", "shape", "member", "shard_sha256"]
_REQUIRED_COLUMNS = INDEX_COLUMNS[:5]
SUMMARY = "summary.json"
SHARD_SUFFIX = ".npz"
RECORD_SUFFIX = ".json"

_made_dirs: set[str] = set()


class FeatureStoreError(ValueError):
    """A feature store holds something it must not: a corrupt shard, a non-finite array; the
    message names the file (and the clip)."""


def feature_key(kind: str, config: dict[str, Any]) -> str:
    """16-hex hash of a kind and everything that determines its values (stable across runs)."""
    payload = json.dumps({"kind": kind, **config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- shards
def shard_folder(kind: str, key: str) -> str:
    """Folder of a (kind, configuration)'s shards inside the store."""
    return f"{kind}/{key}"


def shard_id(clips: Sequence[str]) -> str:
    """A shard's name: the hash of the clip hashes it holds (the same work gives the same name, so
    parallel writers of different shards never collide and a re-run names a shard as before)."""
    return "shard-" + hashlib.sha256("\n".join(sorted(clips)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardRecord:
    """What a shard's `.json` says: the `.npz`'s sha256 and each clip's array shape."""

    file: str
    """The `.npz`, relative to the store."""
    sha256: str
    shapes: dict[str, tuple[int, ...]]
    """clip sha256 -> shape."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(root: str | Path, kind: str, key: str, arrays: Mapping[str, np.ndarray]) -> ShardRecord:
    """Write one shard (clip sha256 -> array) and then its record, each by an atomic rename; the
    arrays must be finite (a non-finite array is named, and nothing is written)."""
    if not arrays:
        raise ValueError(f"{root}: empty shard for '{kind}'")
    name = shard_id(list(arrays))
    rel = f"{shard_folder(kind, key)}/{name}{SHARD_SUFFIX}"
    for clip, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise FeatureStoreError(f"{Path(root) / rel}: clip {clip} ('{kind}') has non-finite values; "
                                    "not stored")
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{c: np.ascontiguousarray(a, dtype=np.float32) for c, a in sorted(arrays.items())})
    shapes = {c: tuple(int(d) for d in a.shape) for c, a in arrays.items()}
    record = ShardRecord(rel, file_sha256(path), shapes)
    atomic_write_json(path.with_suffix(RECORD_SUFFIX),
                      {"kind": kind, "key": key, "file": rel, "sha256": record.sha256,
                       "clips": {c: list(s) for c, s in sorted(shapes.items())}})
    return record


def read_record(root: str | Path, record_path: str | Path) -> ShardRecord | None:
    """A shard's record, or None for a half shard (no `.npz`, or an unreadable record)."""
    try:
        with open(record_path) as f:
            rec = json.load(f)
        shapes = {str(c): tuple(int(d) for d in s) for c, s in rec["clips"].items()}
        record = ShardRecord(str(rec["file"]), str(rec["sha256"]), shapes)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if (Path(root) / record.file).is_file() else None


def catalogue(root: str | Path, kind: str, key: str, verify: bool = True) -> tuple[dict[str, ShardRecord], list[str]]:
    """The complete shards of (kind, key) in a store: clip sha256 -> its shard's record, and the
    shards refused (no record: a killed writer's; or bytes that do not match their record: named)."""
    folder = Path(root) / shard_folder(kind, key)
    found: dict[str, ShardRecord] = {}
    refused: list[str] = []
    if not folder.is_dir():
        return found, refused
    recorded: set[str] = set()
    for rec_path in sorted(folder.glob(f"*{RECORD_SUFFIX}")):
        record = read_record(root, rec_path)
        if record is None:
            refused.append(f"{rec_path}: record without its shard")
            continue
        recorded.add(Path(record.file).name)
        if verify and file_sha256(Path(root) / record.file) != record.sha256:
            refused.append(f"{Path(root) / record.file}: sha256 does not match its record (corrupt)")
            continue
        for clip in record.shapes:
            found.setdefault(clip, record)
    for npz in sorted(folder.glob(f"*{SHARD_SUFFIX}")):
        if npz.name not in recorded:
            refused.append(f"{npz}: shard without a record (an unfinished write)")
    return found, refused


def remove_shard(root: str | Path, file: str) -> None:
    """Drop a refused shard (its `.npz` and record) so that it is written again."""
    for p in (Path(root) / file, (Path(root) / file).with_suffix(RECORD_SUFFIX)):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- single arrays (older stores)
def relative_file(kind: str, key: str, sha256: str) -> str:
    """Path of a single-array file inside the store (older stores, test fixtures)."""
    return f"{kind}/{key}/{sha256[:2]}/{sha256}.npy"


def feature_path(root: str | Path, kind: str, key: str, sha256: str) -> Path:
    return Path(root) / relative_file(kind, key, sha256)


def save_array(path: str | Path, arr: np.ndarray) -> None:
    """Write one float32 .npy atomically (temporary sibling + rename): older stores' layout."""
    parent, name = os.path.split(os.fspath(path))
    if parent not in _made_dirs:
        os.makedirs(parent, exist_ok=True)
        _made_dirs.add(parent)
    tmp = f"{parent}/.{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_index(root: str | Path, rows: pd.DataFrame) -> Path:
    """Atomically write `index.parquet` (columns `INDEX_COLUMNS`; member / shard_sha256 empty for
    single-array rows)."""
    missing = [c for c in _REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{root}/{INDEX}: index rows lack columns {missing}")
    rows = rows.copy()
    for c in INDEX_COLUMNS[5:]:
        rows[c] = rows[c].fillna("").astype(str) if c in rows.columns else ""
    path = Path(root) / INDEX
    with atomic_path(path) as tmp:
        rows[INDEX_COLUMNS].to_parquet(tmp, index=False)
    return path


class FeatureSet:
    """Read side of a features folder: what training, augmentation, evaluation and the studies use.

    Each shard is read whole once (one file, one GET when the folder came from S3) and its bytes
    checked against the sha256 its index row records before any array is handed out."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.index = pd.read_parquet(self.root / INDEX)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root}: no {INDEX}; run `affectflow features` first") from None
        for c in INDEX_COLUMNS[5:]:
            if c not in self.index.columns:
                self.index[c] = ""
        self._by_kind = {k: g.set_index("utt_id") for k, g in self.index.groupby("kind")}
        self._shards: dict[str, np.lib.npyio.NpzFile] = {}
        self._lock = threading.Lock()

    @property
    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def has(self, kind: str) -> bool:
        return kind in self._by_kind

    def _rows(self, kind: str, utt_ids: Sequence[str]) -> pd.DataFrame:
        if kind not in self._by_kind:
            raise KeyError(f"{self.root}: no '{kind}' features (have {self.kinds})")
        rows = self._by_kind[kind]
        missing = [u for u in utt_ids if u not in rows.index]
        if missing:
            raise KeyError(f"{self.root}: no '{kind}' features for {len(missing)} clips, e.g. {missing[0]}")
        return rows.loc[list(utt_ids)]

    def _shard(self, file: str, sha256: str) -> np.lib.npyio.NpzFile:
        """An open, verified shard (kept open: a split reads many clips of few shards; members are
        read as asked, so a reader holds only the arrays it took)."""
        with self._lock:
            npz = self._shards.get(file)
            if npz is None:
                path = self.root / file
                if sha256 and file_sha256(path) != sha256:
                    raise FeatureStoreError(f"{path}: shard sha256 does not match the index (corrupt or "
                                            "replaced); re-run `affectflow features`")
                try:
                    npz = self._shards[file] = np.load(path, allow_pickle=False)
                except (ValueError, OSError, zipfile.BadZipFile) as e:
                    raise FeatureStoreError(f"{path}: not a readable shard ({e})") from None
            return npz

    def _array(self, kind: str, utt_id: str, file: str, member: str, sha256: str, mmap: bool) -> np.ndarray:
        if member:
            try:
                arr = self._shard(file, sha256)[member]
            except KeyError:
                raise FeatureStoreError(f"{self.root / file}: no array {member} for clip {utt_id}") from None
        else:
            arr = np.load(self.root / file, mmap_mode="r" if mmap else None)
        return arr

    def load(self, kind: str, utt_ids: Sequence[str], mmap: bool = False, finite: bool = True) -> list[np.ndarray]:
        """Arrays in the order of `utt_ids` (variable length for frame-level kinds); `finite`: a
        non-finite array is an error naming the clip and its file (off only for reports that count them)."""
        rows = self._rows(kind, utt_ids)
        out = []
        for u, file, member, sha in zip(utt_ids, rows["file"], rows["member"].fillna(""),
                                        rows["shard_sha256"].fillna(""), strict=True):
            arr = self._array(kind, u, str(file), str(member), str(sha), mmap)
            if finite and not np.isfinite(arr).all():
                raise FeatureStoreError(f"{self.root / str(file)}: '{kind}' features of clip {u} have "
                                        "non-finite values; refused (re-run `affectflow features`)")
            out.append(arr)
        return out

    def matrix(self, kind: str, utt_ids: Sequence[str]) -> np.ndarray:
        """Stack fixed-size features (e.g. egemaps functionals) into (n, d)."""
        arrs = self.load(kind, utt_ids)
        return np.stack(arrs).astype(np.float32) if arrs else np.zeros((0, 0), np.float32)
