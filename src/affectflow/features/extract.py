"""Stage 2 — features: manifest clips -> log-mel and eGeMAPS arrays in the content-addressed store.

Pipeline (cold cache): worker processes decode + down-mix + resample each clip once
(`affectflow.audio.load`), run openSMILE on that signal when eGeMAPS is missing, write those arrays
themselves and send the waveform back only when log-mel is missing. The main process collects
waveforms as they arrive (jobs are sorted by duration, so neighbours have similar lengths), pads them
into batches and computes log-mel in torch (`LogMel.batch`, on CUDA when present) while the workers
keep decoding: decode and compute overlap.

Warm cache: a clip is looked up by the manifest's sha256 and the kind's config hash (one `stat` per
clip and kind); cached clips are neither decoded nor hashed again, and their shapes come from the
previous index (or the .npy header), so a warm re-run costs a small fraction of a cold one.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow import audio
from affectflow.config import Params
from affectflow.features import egemaps as eg
from affectflow.features.store import (
    INDEX,
    SUMMARY,
    array_shape,
    feature_key,
    feature_path,
    relative_file,
    save_array,
    write_index,
)
from affectflow.manifest import ManifestError, read_manifest
from affectflow.progress import progress
from affectflow.storage import atomic_write_json

LOGMEL = "logmel"
LOGMEL_VERSION = 1
"""Bump when `LogMel` changes values for the same configuration: it is part of the cache key."""

# Jobs per worker round trip: log-mel-only jobs are ~2 ms of decoding, so several go per message;
# openSMILE jobs take ~50 ms, so one at a time keeps the workers evenly loaded.
_CHUNK_DECODE_ONLY = 8
_CHUNK_WITH_SMILE = 1


class FeaturesError(RuntimeError):
    """The features stage cannot go on; the message names the file or key."""


@dataclass
class FeaturesResult:
    index: Path
    summary: dict[str, Any]


# ----------------------------------------------------------------------------- kinds and keys
def requested_kinds(params: Params) -> list[str]:
    """Store kinds that params.features asks for, in a stable order."""
    kinds: list[str] = []
    for k in dict.fromkeys(params.features.kinds):
        kinds += [LOGMEL] if k == LOGMEL else eg.kinds_for(params.features.egemaps)
    return kinds


def feature_keys(params: Params) -> dict[str, str]:
    """kind -> config hash covering everything that changes its values (not device, workers, ...)."""
    sr = params.audio.sample_rate
    keys: dict[str, str] = {}
    for kind in requested_kinds(params):
        if kind == LOGMEL:
            cfg = {**params.features.logmel.model_dump(mode="json"), "sample_rate": sr, "version": LOGMEL_VERSION}
        else:
            cfg = eg.key_config(params.features.egemaps, sr)
        keys[kind] = feature_key(kind, cfg)
    return keys


# ----------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _init_worker(root: str, sample_rate: int, keys: dict[str, str], egemaps_cfg: Any,
                 smile_kinds: list[str]) -> None:
    """Per-process state: where to write, and one reusable openSMILE extractor."""
    _WORKER.update(root=root, sample_rate=sample_rate, keys=keys,
                   smile=eg.Egemaps(egemaps_cfg, smile_kinds) if smile_kinds else None)


_Job = tuple[str, str, bool, tuple[str, ...]]  # sha256, path, want log-mel, openSMILE kinds to compute
_Done = tuple[str, str, "np.ndarray | None", int, dict[str, tuple[int, ...]], int, "str | None"]
# sha256, path, waveform (only if log-mel wanted), samples, saved shapes, non-finite arrays, error


def _work(job: _Job) -> _Done:
    """Decode once; openSMILE kinds are computed and saved here; the waveform goes back for log-mel."""
    sha, path, want_logmel, smile_kinds = job
    sr = _WORKER["sample_rate"]
    try:
        x = audio.load(path, sr)
    except audio.AudioError as e:
        return sha, path, None, 0, {}, 0, e.reason
    shapes: dict[str, tuple[int, ...]] = {}
    nonfinite = 0
    if smile_kinds:
        try:
            feats = _WORKER["smile"](x, sr, smile_kinds)
        except Exception as e:  # openSMILE raises plain RuntimeErrors from its C layer
            return sha, path, None, x.size, {}, 0, f"openSMILE failed ({e})"
        for kind, arr in feats.items():
            save_array(feature_path(_WORKER["root"], kind, _WORKER["keys"][kind], sha), arr)
            shapes[kind] = arr.shape
            nonfinite += int(not np.isfinite(arr).all())
    return sha, path, (x if want_logmel else None), x.size, shapes, nonfinite, None


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


# ----------------------------------------------------------------------------- the stage
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


def _previous_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """file -> shape from the last index (so cached arrays need not be opened)."""
    try:
        old = pd.read_parquet(root / INDEX, columns=["file", "shape"])
    except Exception:  # absent or unreadable: shapes come from the .npy headers instead
        return {}
    return {f: tuple(int(d) for d in s) for f, s in zip(old["file"], old["shape"], strict=True) if s is not None}


def extract_features(params: Params, manifest_path: str | Path, out_dir: str | Path) -> FeaturesResult:
    """Compute missing features for the manifest's clips; write `index.parquet` and `summary.json`."""
    t_start = time.perf_counter()
    manifest_path, root = Path(manifest_path), Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    df = _read_clips(manifest_path)
    keys = feature_keys(params)
    if not keys:
        raise FeaturesError("features.kinds / features.egemaps.levels: no feature kind requested")
    clips = df.drop_duplicates("sha256").sort_values("duration", ascending=False, kind="stable")
    missing = {kind: {s for s in clips["sha256"] if not feature_path(root, kind, key, s).exists()}
               for kind, key in keys.items()}
    jobs: list[_Job] = []
    for sha, path in zip(clips["sha256"], clips["path"], strict=True):
        smile = tuple(k for k in keys if k != LOGMEL and sha in missing[k])
        want_logmel = LOGMEL in keys and sha in missing[LOGMEL]
        if want_logmel or smile:
            jobs.append((sha, str(path), want_logmel, smile))

    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    run = _compute(params, root, keys, jobs, shapes) if jobs else {"audio_seconds": 0.0}

    previous = _previous_shapes(root) if len(shapes) < len(keys) * len(clips) else {}
    frames = []
    for kind, key in keys.items():
        files = [relative_file(kind, key, s) for s in df["sha256"]]
        kind_shapes = []
        for sha, f in zip(df["sha256"], files, strict=True):
            shape = shapes.get((kind, sha)) or previous.get(f)
            if shape is None:
                shape = shapes[(kind, sha)] = array_shape(root / f)
            kind_shapes.append(list(shape))
        frames.append(pd.DataFrame({"utt_id": df["utt_id"].astype(str), "kind": kind, "key": key,
                                    "file": files, "shape": kind_shapes}))
    index = write_index(root, pd.concat(frames, ignore_index=True))

    seconds = time.perf_counter() - t_start
    audio_s = float(run["audio_seconds"])
    summary: dict[str, Any] = {
        "clips": len(df),
        "unique_audio": len(clips),
        "kinds": {k: {"key": keys[k], "computed": len(missing[k]), "cached": len(clips) - len(missing[k])}
                  for k in keys},
        "audio_seconds_computed": round(audio_s, 3),
        "seconds": round(seconds, 3),
        "x_realtime": round(audio_s / seconds, 1) if audio_s else None,
        **{k: v for k, v in run.items() if k != "audio_seconds"},
    }
    atomic_write_json(root / SUMMARY, summary)
    return FeaturesResult(index=index, summary=summary)


def _compute(params: Params, root: Path, keys: dict[str, str], jobs: list[_Job],
             shapes: dict[tuple[str, str], tuple[int, ...]]) -> dict[str, Any]:
    """Run the decode workers and the batched log-mel consumer; fills `shapes`; returns run facts."""
    f = params.features
    sr = params.audio.sample_rate
    smile_kinds = sorted({k for j in jobs for k in j[3]})
    any_logmel = any(j[2] for j in jobs)
    workers = min(f.workers, len(jobs))
    facts: dict[str, Any] = {"workers": workers, "audio_seconds": 0.0, "nonfinite_arrays": 0}
    device = None
    if any_logmel:
        from affectflow.features import logmel as lm  # torch is imported only when log-mel is computed

        lm.check_config(f.logmel, sr)
        device = lm.resolve_device(f.device)
    init_args = (str(root), sr, keys, f.egemaps, smile_kinds)
    pool = None
    if workers > 1:
        chunk = _CHUNK_WITH_SMILE if smile_kinds else _CHUNK_DECODE_ONLY
        pool = _mp_context().Pool(workers, _init_worker, init_args)
        results: Iterable[_Done] = pool.imap_unordered(_work, jobs, chunksize=chunk)
    else:
        _init_worker(*init_args)
        results = map(_work, jobs)

    import_threads: int | None = None
    try:
        if any_logmel:
            import torch

            from affectflow.features import logmel as lm

            import_threads = torch.get_num_threads()
            threads = f.threads or max(1, _cpu_count() - (workers if workers > 1 else 0))
            if device is not None and device.type == "cpu":
                torch.set_num_threads(threads)
                facts["torch_threads"] = threads
            extractor = lm.LogMel(f.logmel, sr, device or "cpu")
            facts["device"] = str(device)
        pending: list[tuple[str, np.ndarray]] = []
        compute_s = 0.0

        def flush() -> None:
            nonlocal compute_s
            t0 = time.perf_counter()
            mels = extractor.batch([w for _, w in pending])
            compute_s += time.perf_counter() - t0
            for (sha, _), m in zip(pending, mels, strict=True):
                save_array(feature_path(root, LOGMEL, keys[LOGMEL], sha), m)
                shapes[(LOGMEL, sha)] = m.shape
            pending.clear()

        for sha, path, wave, n, saved, nonfinite, err in _progress(results, len(jobs)):
            if err is not None:
                raise audio.AudioError(path, f"{err} (features stage)")
            facts["audio_seconds"] += n / sr
            facts["nonfinite_arrays"] += nonfinite
            for kind, shape in saved.items():
                shapes[(kind, sha)] = shape
            if wave is not None:
                pending.append((sha, wave))
                if len(pending) >= f.batch_size:
                    flush()
        if pending:
            flush()
        if any_logmel:
            facts["logmel_compute_seconds"] = round(compute_s, 3)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if import_threads is not None:
            import torch

            torch.set_num_threads(import_threads)
    return facts


def _progress(results: Iterable[_Done], total: int) -> Iterator[_Done]:
    yield from progress(results, "features", total=total, unit="clip")
