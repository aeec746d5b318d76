"""Stage 2 — features: manifest clips -> the kinds asked for, in the sharded content-addressed store.

What is computed: `features.kinds` as this stage is handed it — the kinds the enabled stages and the
configured model read plus any extra ones (`affectflow.stages.feature_kinds`, applied before the
stage's settings are handed out), so a run computes only what it uses.

The work is cut into shards (`features.shards`, default one per `SHARD_CLIPS` new clips): the clips
no shard holds yet, duration-sorted and dealt round-robin so every shard gets the same mix. The same
code runs the whole plan in this process (a local run) or one shard of it (`shard=(i, n)`: one task
of the cluster's `ParallelFor`, whose gather task is a plain run reusing the tasks' shards).

Inside a run: worker processes (`features.workers`) take chunks of similar-length clips, shard after
shard: decode + down-mix + resample each clip once (`affectflow.audio.load`), run openSMILE on that
signal for the missing openSMILE kinds, and log-mel where `features.logmel_in` says:
  * main (auto on CUDA): in the main process, on batches of the waveforms the workers send back,
    while the workers keep decoding — one process feeds the GPU;
  * workers (auto on CPU): inside the worker that decoded the chunk (one torch thread each), so
    decode and compute of different chunks overlap across processes.
The arrays come back to the main process, which writes a shard (one `.npz` + record per kind) as
soon as its last clip is in; a killed run leaves whole shards and no trusted half one, and the next
run computes only the clips no complete shard holds.

Trust, but check: a clip is decoded from bytes read once and hashed, and a file whose sha256 is not
the manifest's any more (cut, re-encoded or replaced after ingest) stops the stage with an error
naming it, so no array is ever stored under a content key that is not its audio's; a non-finite
array stops it naming the audio file; a shard whose bytes do not match its record is named and
computed again.

Warm cache: the shards' records (clip sha256 -> shape) are read and each shard's hash checked; a
warm re-run opens no audio and costs a small fraction of a cold one.

The deployment's store (`features.store`, `store_location`): every run reads it before computing,
like `features.previous`, and a complete run (a local run, or the cluster's gather task) adds to it
the shards it lacks, record last (`publish`). Shards are named by their clips, so runs and pipelines
share it without coordination, and each pipeline run's output stays a self-contained store of its
own (copied in, or hard-linked where both are local folders).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow import audio
from affectflow.config import Params
from affectflow.contracts.feature_store import (
    INDEX,
    RECORD_SUFFIX,
    SHARD_SUFFIX,
    SUMMARY,
    ShardRecord,
    catalogue,
    shard_folder,
    write_index,
    write_shard,
)
from affectflow.contracts.manifest import ManifestError, read_manifest
from affectflow.features import egemaps as eg
from affectflow.features.keys import KINDS, LOGMEL, SSL, feature_keys
from affectflow.features.robustness import copy_kind, recording_copy, split_kind
from affectflow.runtime.device import resolve_device
from affectflow.runtime.progress import progress
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_path, atomic_write_json
from affectflow.storage.s3 import is_s3

log = logging.getLogger(__name__)


class FeaturesError(RuntimeError):
    """The features stage cannot go on; the message names the file or key."""


@dataclass
class FeaturesResult:
    index: Path
    summary: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return self.index.parent


# ----------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}

_Job = tuple[str, str, bool, tuple[str, ...], str]
# sha256, path, want log-mel, openSMILE kinds to compute (recording-condition copies included), corpus
_Done = tuple[str, str, "np.ndarray | None", int, dict[str, np.ndarray], "str | None"]
# sha256, path, waveform (only when the main process computes log-mel), samples, arrays by kind, error


def _init_worker(sample_rate: int, egemaps_cfg: Any, smile_kinds: list[str], logmel_cfg: Any,
                 torch_threads: int, device: str = "cpu", robustness: Any = None) -> None:
    """Per-process state: one reusable openSMILE extractor, and maybe a LogMel (worker processes:
    on CPU; inline, i.e. one worker: in this process, on the chosen device)."""
    bases = sorted({split_kind(k)[0] for k in smile_kinds})
    _WORKER.update(sample_rate=sample_rate, logmel=None, robustness=robustness,
                   smile=eg.Egemaps(egemaps_cfg, bases) if bases else None,
                   seconds={"decode": 0.0, "egemaps": 0.0, "logmel": 0.0})
    if logmel_cfg is not None:
        import torch

        from affectflow.features.logmel import LogMel

        torch.set_num_threads(torch_threads)
        _WORKER["logmel"] = LogMel(logmel_cfg, sample_rate, device)


def _work_chunk(jobs: list[_Job]) -> tuple[list[_Done], dict[str, float]]:
    """Decode a chunk of similar-length clips once each; openSMILE them; log-mel them as one batch
    here (CPU mode) or hand the waveforms back (CUDA mode). Arrays go back to the process that
    writes the shard. Stops at the first bad clip."""
    sr = _WORKER["sample_rate"]
    secs = dict.fromkeys(_WORKER["seconds"], 0.0)
    done: list[_Done] = []
    to_mel: list[tuple[int, np.ndarray]] = []
    for sha, path, want_logmel, smile_kinds, corpus in jobs:
        t0 = time.perf_counter()
        try:
            x = audio.load(path, sr, expect_sha256=sha)  # the bytes must still be the manifest's
        except audio.AudioError as e:
            done.append((sha, path, None, 0, {}, e.reason))
            return done, secs
        t1 = time.perf_counter()
        secs["decode"] += t1 - t0
        arrays: dict[str, np.ndarray] = {}
        if smile_kinds:
            try:
                arrays.update(_smile_with_copies(x, sr, smile_kinds, corpus, sha))
            except Exception as e:  # openSMILE raises plain RuntimeErrors from its C layer
                done.append((sha, path, None, x.size, {}, f"openSMILE failed ({e})"))
                return done, secs
            secs["egemaps"] += time.perf_counter() - t1
        local = want_logmel and _WORKER["logmel"] is not None
        if local:
            to_mel.append((len(done), x))
        done.append((sha, path, x if want_logmel and not local else None, x.size, arrays, None))
    if to_mel:
        t0 = time.perf_counter()
        mels = _WORKER["logmel"].batch([x for _, x in to_mel])
        for (i, _), m in zip(to_mel, mels, strict=True):
            done[i][4][LOGMEL] = m
        secs["logmel"] += time.perf_counter() - t0
    return done, secs


def _smile_with_copies(x: np.ndarray, sr: int, kinds: tuple[str, ...], corpus: str, sha: str) -> dict[str, np.ndarray]:
    """openSMILE kinds of the clean clip and of its recording-condition copies (`kind@r<k>`)."""
    by_copy: dict[int, list[str]] = {}
    for kind in kinds:
        base, k = split_kind(kind)
        by_copy.setdefault(k, []).append(base)
    out: dict[str, np.ndarray] = {}
    for k, bases in sorted(by_copy.items()):
        wave = x if k == 0 else recording_copy(x, sr, _WORKER["robustness"], corpus, k, sha)
        for base, arr in _WORKER["smile"](wave, sr, bases).items():
            out[copy_kind(base, k) if k else base] = arr
    return out


def _mp_context() -> Any:
    """fork where it exists: workers start in milliseconds and inherit imports; they never touch
    torch or CUDA (the pool is started before the main process puts anything on a GPU)."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


def _link_or_copy(src: Path, dst: Path) -> None:
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
            _link_or_copy((root / f).with_suffix(suffix), (dest / f).with_suffix(suffix))
    return len(new)


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
                    _link_or_copy((src / record.file).with_suffix(suffix), dst.with_suffix(suffix))
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


# ----------------------------------------------------------------------------- the stage
def extract_features(params: Params, manifest_path: str | Path, out_dir: str | Path,
                     shard: int | None = None, previous: Sequence[str | Path] = ()) -> FeaturesResult:
    """Compute the clips no shard holds yet, shard by shard; write `index.parquet` and `summary.json`.

    `shard=i`: compute only shard i of the plan (one task of a scale-out, whose shards are
    `shards_to_compute`; it writes its new shards and no index: the gather, a plain run with the
    tasks' folders as `previous`, does). `previous`: earlier stores whose shards are reused (copied
    in) for the clips they hold."""
    t_start = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    pl = plan(params, manifest_path, root, previous, copy=shard is None)
    plan_s = time.perf_counter() - t_start
    keys, df, clips = pl.keys, pl.clips, pl.clips.drop_duplicates("sha256")
    shards = pl.shards
    if shard is not None:
        if not 0 <= shard < len(pl.shards):
            raise FeaturesError(f"{manifest_path}: shard {shard} of {len(pl.shards)}: no such shard "
                                "(the manifest or the stores changed since the plan)")
        shards = [pl.shards[shard]]
    run = _compute(params, root, keys, shards, pl.found) if shards else {"audio_seconds": 0.0}
    by_sha = dict(zip(clips["sha256"], clips["duration"], strict=True))
    if not any(j[2] or j[3] for s in shards for j in s):
        run["audio_seconds"] = float(sum(by_sha[j[0]] for s in shards for j in s))
    summary: dict[str, Any] = {
        "clips": len(df),
        "unique_audio": len(clips),
        "kinds": {k: {"key": keys[k], "computed": len(pl.missing[k]), "cached": len(clips) - len(pl.missing[k])}
                  for k in keys},
        "shards_written": len(shards),
        "shards_refused": pl.refused,
    }
    if shard is not None:
        summary["shard"] = [shard, len(pl.shards)]
        for k in keys:  # a scale-out task computes only its share of the missing clips
            summary["kinds"][k]["computed"] = sum(1 for s in shards for j in s if j[0] in pl.missing[k])
    else:
        frames = []
        for kind, key in keys.items():
            records = [pl.found[kind].get(s) for s in df["sha256"]]
            lost = [u for u, r in zip(df["utt_id"], records, strict=True) if r is None]
            if lost:
                raise FeaturesError(f"{root}: no '{kind}' array for {len(lost)} clips after extraction, "
                                    f"e.g. {lost[0]}")
            frames.append(pd.DataFrame({
                "utt_id": df["utt_id"].astype(str), "kind": kind, "key": key,
                "file": [r.file for r in records if r is not None],
                "shape": [list(r.shapes[s]) for s, r in zip(df["sha256"], records, strict=True) if r is not None],
                "member": df["sha256"].astype(str).to_numpy(),
                "shard_sha256": [r.sha256 for r in records if r is not None]}))
        summary["index"] = str(write_index(root, pd.concat(frames, ignore_index=True)))
        summary["store"] = {"location": store_location(params), "shards_added": publish(params, root, keys, pl.found)}
    seconds = time.perf_counter() - t_start
    audio_s = float(run["audio_seconds"])
    summary.update({
        "audio_seconds_computed": round(audio_s, 3),
        "seconds": round(seconds, 3),
        "plan_seconds": round(plan_s, 3),
        "x_realtime": round(audio_s / seconds, 1) if audio_s else None,
        **{k: v for k, v in run.items() if k != "audio_seconds"},
    })
    atomic_write_json(root / SUMMARY, summary)
    return FeaturesResult(index=root / INDEX, summary=summary)


@dataclass
class _Layout:
    """How one cold run is spread over processes and threads (see the module docstring)."""

    workers: int
    device: Any
    in_main: bool
    """Log-mel batched in the main process (CUDA) rather than in the decode workers."""
    main_threads: int
    worker_threads: int
    chunks: list[list[_Job]]
    facts: dict[str, Any]


def _layout(params: Params, shards: list[list[_Job]]) -> _Layout:
    f = params.features
    jobs = [j for s in shards for j in s if j[2] or j[3]]
    any_logmel = any(j[2] for j in jobs)
    workers = max(1, min(f.workers, len(jobs)))
    facts: dict[str, Any] = {"workers": workers, "audio_seconds": 0.0}
    device = None
    if any_logmel:
        from affectflow.features import logmel as lm  # torch is imported only when log-mel is computed

        lm.check_config(f.logmel, params.audio.sample_rate)
        device = resolve_device(f.device, "features.device")
        facts["device"] = str(device)
    # Inline (one worker) everything is in this process.
    in_main = device is not None and workers > 1 and (
        f.logmel_in == "main" or (f.logmel_in == "auto" and device.type != "cpu"))
    cores = _cpu_count()
    # Torch threads: per worker, the cores shared out; in the main process (inline, or batching what
    # the workers send), the cores they leave.
    worker_threads = f.threads or max(1, cores // workers)
    main_threads = f.threads or (cores if workers == 1 else max(1, cores - workers))
    if any_logmel:
        facts["logmel_in"] = "main" if in_main or workers == 1 else "workers"
        facts["torch_threads"] = main_threads if facts["logmel_in"] == "main" else worker_threads
    # Chunks of similar-length neighbours, shard after shard (a shard is written as soon as its
    # last chunk is back); at least two per worker so the last ones do not straggle. Log-mel
    # batches `batch_size` clips (one padded STFT); openSMILE works clip by clip, so its chunks are
    # small: the first clips are back in seconds and no worker waits on another's long chunk.
    per_chunk = f.batch_size if any_logmel else min(f.batch_size, SMILE_CHUNK)
    size = max(1, min(per_chunk, math.ceil(len(jobs) / (2 * workers)) if jobs else 1))
    chunks = []
    for s in shards:
        s_jobs = sorted((j for j in s if j[2] or j[3]), key=lambda j: j[0])
        chunks += [s_jobs[i : i + size] for i in range(0, len(s_jobs), size)]
    return _Layout(workers, device, in_main, main_threads, worker_threads, chunks, facts)


class _Shards:
    """Collects each shard's arrays as its clips come back and writes the shard (one file per kind)
    when the last one is in; a shard is all-or-nothing on disk."""

    def __init__(self, root: Path, keys: dict[str, str], shards: list[list[_Job]],
                 found: dict[str, dict[str, ShardRecord]], stage_s: dict[str, float]):
        self.root, self.keys, self.found, self.stage_s = root, keys, found, stage_s
        self.shard_of = {j[0]: i for i, s in enumerate(shards) for j in s}
        self.left = [len(s) for s in shards]
        self.paths = {j[0]: j[1] for s in shards for j in s}
        self.arrays: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in shards]

    def add(self, sha: str, arrays: dict[str, np.ndarray]) -> None:
        for kind, arr in arrays.items():
            if not np.isfinite(arr).all():
                raise FeaturesError(f"{self.paths[sha]}: '{kind}' features are non-finite; not stored "
                                    "(check the audio: silence, clipping or a decoding fault)")
            self.arrays[self.shard_of[sha]].setdefault(kind, {})[sha] = arr

    def clip_done(self, sha: str) -> None:
        i = self.shard_of[sha]
        self.left[i] -= 1
        if self.left[i] == 0:
            t0 = time.perf_counter()
            for kind, arrays in sorted(self.arrays[i].items()):
                record = write_shard(self.root, kind, self.keys[kind], arrays)
                for clip in arrays:
                    self.found[kind][clip] = record
            self.arrays[i] = {}
            self.stage_s["write"] += time.perf_counter() - t0


class _MainLogMel:
    """Log-mel in the main process on batches of the waveforms the workers send back (one process
    feeds the GPU); finished clips go to the shard writer."""

    def __init__(self, params: Params, device: Any, threads: int, out: _Shards, stage_s: dict[str, float]):
        import torch

        from affectflow.features.logmel import LogMel

        torch.set_num_threads(threads)  # the caller restores it
        self.extractor = LogMel(params.features.logmel, params.audio.sample_rate, device)
        self.out, self.stage_s = out, stage_s
        self.batch_size = params.features.batch_size
        self.pending: list[tuple[str, np.ndarray]] = []

    def add(self, sha: str, wave: np.ndarray) -> None:
        self.pending.append((sha, wave))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        mels = self.extractor.batch([w for _, w in self.pending])
        self.stage_s["logmel"] += time.perf_counter() - t0
        for (sha, _), m in zip(self.pending, mels, strict=True):
            self.out.add(sha, {LOGMEL: m})
            self.out.clip_done(sha)
        self.pending.clear()


def _ssl_first(params: Params, keys: dict[str, str], shards: list[list[_Job]],
               found: dict[str, dict[str, ShardRecord]], out: _Shards, facts: dict[str, Any]) -> dict[str, np.ndarray]:
    """The SSL encoder before the openSMILE / log-mel workers (one process, all threads): clips with
    nothing else to compute are handed to their shards now, the others' vectors are returned."""
    jobs = [j for s in shards for j in s if SSL in keys and j[0] not in found[SSL]]
    arrays: dict[str, np.ndarray] = {}
    if not jobs:
        return arrays
    facts["ssl"] = _compute_ssl(params, jobs, arrays)
    for j in jobs:
        if not (j[2] or j[3]):
            out.add(j[0], {SSL: arrays.pop(j[0])})
            out.clip_done(j[0])
    return arrays


def _start(lay: _Layout, init_args: tuple[Any, ...]) -> tuple[Iterable[tuple[list[_Done], dict[str, float]]], Any]:
    """Chunk results in plan order: from a worker pool, or computed inline (one worker)."""
    if lay.workers > 1 and lay.chunks:
        # The pool starts before anything reaches a GPU, so forked workers inherit no CUDA state.
        pool = _mp_context().Pool(lay.workers, _init_worker, init_args)
        return pool.imap(_work_chunk, lay.chunks), pool
    if lay.chunks:
        _init_worker(*init_args)
    return map(_work_chunk, lay.chunks), None


def _compute(params: Params, root: Path, keys: dict[str, str], shards: list[list[_Job]],
             found: dict[str, dict[str, ShardRecord]]) -> dict[str, Any]:
    """Run the decode workers (and the main-process log-mel consumer on CUDA), after the SSL
    encoder; each shard is written when complete, and `found` gains its records."""
    f = params.features
    sr = params.audio.sample_rate
    t_start = time.perf_counter()
    lay = _layout(params, shards)
    facts = lay.facts
    stage_s = {"decode": 0.0, "egemaps": 0.0, "logmel": 0.0, "write": 0.0}
    out = _Shards(root, keys, shards, found, stage_s)
    ssl_arrays = _ssl_first(params, keys, shards, found, out, facts)
    import_threads: int | None = None
    if lay.device is not None:
        import torch

        import_threads = torch.get_num_threads()
    smile_kinds = sorted({k for c in lay.chunks for j in c for k in j[3]})
    init_args = (sr, f.egemaps, smile_kinds,
                 f.logmel if lay.device is not None and not lay.in_main else None,
                 lay.main_threads if lay.workers == 1 else lay.worker_threads,
                 str(lay.device) if lay.workers == 1 and lay.device is not None else "cpu", f.robustness)
    pool = None
    try:
        results, pool = _start(lay, init_args)
        main = _MainLogMel(params, lay.device, lay.main_threads, out, stage_s) if lay.in_main else None
        for sha, path, wave, n, arrays, err in _clips(results, stage_s, sum(len(c) for c in lay.chunks)):
            facts.setdefault("first_clip_seconds", round(time.perf_counter() - t_start, 2))
            if err is not None:
                raise audio.AudioError(path, f"{err} (features stage)")
            facts["audio_seconds"] += n / sr
            if sha in ssl_arrays:
                arrays[SSL] = ssl_arrays.pop(sha)
            out.add(sha, arrays)
            if wave is not None and main is not None:
                main.add(sha, wave)
            else:
                out.clip_done(sha)
        if main is not None:
            main.flush()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if import_threads is not None:
            import torch

            torch.set_num_threads(import_threads)
    facts["process_seconds"] = {k: round(v, 3) for k, v in stage_s.items()}
    return facts


def _compute_ssl(params: Params, jobs: list[_Job], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The pretrained encoder in this process (it feeds one GPU, or uses the CPU's threads), on
    batches of clips decoded ahead by a thread pool; fills `arrays` (clip sha256 -> vector)."""
    from affectflow.features.ssl import SslEncoder

    cfg = params.features.ssl
    sr = params.audio.sample_rate
    device = resolve_device(cfg.device, "features.ssl.device")
    t0 = time.perf_counter()
    encoder = SslEncoder(cfg, sr, device)
    load_s = time.perf_counter() - t0
    rows = [(j[0], j[1]) for j in jobs]
    batch = max(cfg.batch_size, 1)
    with ThreadPoolExecutor(max_workers=max(1, params.features.workers)) as pool, \
            ThreadPoolExecutor(max_workers=1) as reader:
        def decode(chunk: list[tuple[str, str]]) -> list[np.ndarray]:
            return list(pool.map(lambda r: audio.load(r[1], sr), chunk))

        chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
        ahead = reader.submit(decode, chunks[0]) if chunks else None
        for i, chunk in enumerate(progress(chunks, "features ssl", unit="batch")):
            assert ahead is not None
            waves = ahead.result()
            ahead = reader.submit(decode, chunks[i + 1]) if i + 1 < len(chunks) else None
            for (sha, _), vec in zip(chunk, encoder(waves), strict=True):
                arrays[sha] = vec
    return {"device": str(device), "dim": encoder.dim, "layers": encoder.layers,
            "load_seconds": round(load_s, 2), "seconds": round(time.perf_counter() - t0, 2)}


def _clips(results: Iterable[tuple[list[_Done], dict[str, float]]], stage_s: dict[str, float],
           total: int) -> Iterator[_Done]:
    """Flatten chunk results (adding up per-stage seconds) under one per-clip progress bar."""

    def flat() -> Iterator[_Done]:
        for done, secs in results:
            for k, v in secs.items():
                stage_s[k] += v
            yield from done

    yield from progress(flat(), "features", total=total, unit="clip")


def run(params: Params, inputs: Inputs, out_dir: Path) -> FeaturesResult:
    return extract_features(params, inputs["manifest"], out_dir)
