"""Stage 2 — features: manifest clips -> log-mel and eGeMAPS arrays in the content-addressed store.

Pipeline (cold cache): clips are sorted by duration and cut into chunks of `features.batch_size`
neighbours (similar lengths, so little batch padding). Worker processes (`features.workers`) take
one chunk at a time: decode + down-mix + resample each clip once (`affectflow.audio.load`), run
openSMILE on that signal for the missing eGeMAPS kinds, and write those arrays themselves. Log-mel
(`LogMel.batch`, one padded torch STFT per batch) runs where `features.logmel_in` says:
  * main (auto on CUDA): in the main process, on batches of the waveforms the workers send back,
    while the workers keep decoding — one process feeds the GPU;
  * workers (auto on CPU): inside the worker that decoded the chunk (one torch thread each), so
    decode and compute of different chunks overlap across processes. Measured on 2 cores, shipping
    the waveforms (~340 MB for RAVDESS) to the main process and batching there costs 9–35 % more
    CPU (pickling; the main process becomes the bottleneck) than computing where the audio already
    is; see benchmarks/RESULTS.md.

Trust, but check: a clip is decoded from bytes read once and hashed, and a file whose sha256 is not
the manifest's any more (cut, re-encoded or replaced after ingest) stops the stage with an error
naming it, so no array is ever stored under a content key that is not its audio's.

Warm cache: a clip is looked up by the manifest's sha256 and the kind's config hash (one `stat` per
clip and kind); cached clips are neither decoded nor hashed again, and their shapes come from the
previous index (or the .npy header), so a warm re-run costs a small fraction of a cold one.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow import audio
from affectflow.config import Params
from affectflow.contracts.feature_store import (
    INDEX,
    SUMMARY,
    array_shape,
    relative_file,
    save_array,
    write_index,
)
from affectflow.contracts.manifest import ManifestError, read_manifest
from affectflow.features import egemaps as eg
from affectflow.features.keys import LOGMEL, SSL, feature_keys
from affectflow.features.robustness import copy_kind, recording_copy, split_kind
from affectflow.runtime.device import resolve_device
from affectflow.runtime.progress import progress
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_write_json


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
_Done = tuple[str, str, "np.ndarray | None", int, dict[str, tuple[int, ...]], int, "str | None"]
# sha256, path, waveform (only when the main process computes log-mel), samples, saved shapes,
# non-finite arrays, error


def _init_worker(root: str, sample_rate: int, keys: dict[str, str], egemaps_cfg: Any, smile_kinds: list[str],
                 logmel_cfg: Any, torch_threads: int, device: str = "cpu", robustness: Any = None) -> None:
    """Per-process state: where to write, one reusable openSMILE extractor, and maybe a LogMel
    (worker processes: on CPU; inline, i.e. one worker: in this process, on the chosen device)."""
    bases = sorted({split_kind(k)[0] for k in smile_kinds})
    _WORKER.update(root=root, sample_rate=sample_rate, keys=keys, logmel=None, robustness=robustness,
                   smile=eg.Egemaps(egemaps_cfg, bases) if bases else None,
                   seconds={"decode": 0.0, "egemaps": 0.0, "logmel": 0.0, "write": 0.0})
    if logmel_cfg is not None:
        import torch

        from affectflow.features.logmel import LogMel

        torch.set_num_threads(torch_threads)
        _WORKER["logmel"] = LogMel(logmel_cfg, sample_rate, device)


def _work_chunk(jobs: list[_Job]) -> tuple[list[_Done], dict[str, float]]:
    """Decode a chunk of similar-length clips once each; save openSMILE arrays; log-mel them as one
    batch here (CPU mode) or hand the waveforms back (CUDA mode). Stops at the first bad clip."""
    sr, root, keys = _WORKER["sample_rate"], _WORKER["root"], _WORKER["keys"]
    secs = dict.fromkeys(_WORKER["seconds"], 0.0)
    done: list[_Done] = []
    to_mel: list[tuple[int, np.ndarray]] = []
    for sha, path, want_logmel, smile_kinds, corpus in jobs:
        t0 = time.perf_counter()
        try:
            x = audio.load(path, sr, expect_sha256=sha)  # the bytes must still be the manifest's
        except audio.AudioError as e:
            done.append((sha, path, None, 0, {}, 0, e.reason))
            return done, secs
        t1 = time.perf_counter()
        secs["decode"] += t1 - t0
        shapes: dict[str, tuple[int, ...]] = {}
        nonfinite = 0
        if smile_kinds:
            try:
                feats = _smile_with_copies(x, sr, smile_kinds, corpus, sha)
            except Exception as e:  # openSMILE raises plain RuntimeErrors from its C layer
                done.append((sha, path, None, x.size, {}, 0, f"openSMILE failed ({e})"))
                return done, secs
            t2 = time.perf_counter()
            secs["egemaps"] += t2 - t1
            for kind, arr in feats.items():
                save_array(f"{root}/{relative_file(kind, keys[kind], sha)}", arr)
                shapes[kind] = arr.shape
                nonfinite += int(not np.isfinite(arr).all())
            secs["write"] += time.perf_counter() - t2
        local = want_logmel and _WORKER["logmel"] is not None
        if local:
            to_mel.append((len(done), x))
        done.append((sha, path, x if want_logmel and not local else None, x.size, shapes, nonfinite, None))
    if to_mel:
        t0 = time.perf_counter()
        mels = _WORKER["logmel"].batch([x for _, x in to_mel])
        t1 = time.perf_counter()
        for (i, _), m in zip(to_mel, mels, strict=True):
            sha = done[i][0]
            save_array(f"{root}/{relative_file(LOGMEL, keys[LOGMEL], sha)}", m)
            done[i][4][LOGMEL] = m.shape
        secs["logmel"] += t1 - t0
        secs["write"] += time.perf_counter() - t1
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
    base = str(root)  # plain strings and os.path: pathlib would dominate a warm run's time
    missing = {kind: {s for s in clips["sha256"] if not os.path.exists(f"{base}/{relative_file(kind, key, s)}")}
               for kind, key in keys.items()}
    jobs: list[_Job] = []
    for sha, path, corpus in zip(clips["sha256"], clips["path"], clips["corpus"].astype(str), strict=True):
        smile = tuple(k for k in keys if split_kind(k)[0] in eg.SMILE_KINDS and sha in missing[k])
        want_logmel = LOGMEL in keys and sha in missing[LOGMEL]
        if want_logmel or smile:
            jobs.append((sha, str(path), want_logmel, smile, corpus))

    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    run = _compute(params, root, keys, jobs, shapes) if jobs else {"audio_seconds": 0.0}
    if SSL in keys and missing[SSL]:
        todo = clips[clips["sha256"].isin(missing[SSL])]
        run["ssl"] = _compute_ssl(params, root, keys[SSL], todo, shapes)
        if not jobs:
            run["audio_seconds"] = float(todo["duration"].sum())

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


def _layout(params: Params, jobs: list[_Job]) -> _Layout:
    f = params.features
    any_logmel = any(j[2] for j in jobs)
    workers = min(f.workers, len(jobs))
    facts: dict[str, Any] = {"workers": workers, "audio_seconds": 0.0, "nonfinite_arrays": 0}
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
    # Chunks of similar-length neighbours; at least two per worker so the last ones do not straggle.
    size = max(1, min(f.batch_size, math.ceil(len(jobs) / (2 * workers))))
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    return _Layout(workers, device, in_main, main_threads, worker_threads, chunks, facts)


class _MainLogMel:
    """Log-mel in the main process on batches of the waveforms the workers send back; one writer
    thread overlaps the saves with the next batch (file creation is mostly kernel time without the GIL)."""

    def __init__(self, params: Params, root: Path, keys: dict[str, str], device: Any, threads: int,
                 shapes: dict[tuple[str, str], tuple[int, ...]], stage_s: dict[str, float]):
        import torch

        from affectflow.features.logmel import LogMel

        torch.set_num_threads(threads)  # the caller restores it
        self.extractor = LogMel(params.features.logmel, params.audio.sample_rate, device)
        self.root, self.key, self.shapes, self.stage_s = root, keys[LOGMEL], shapes, stage_s
        self.batch_size = params.features.batch_size
        self.pending: list[tuple[str, np.ndarray]] = []
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="features-writer")
        self.writing: Future[None] | None = None

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
        items = []
        for (sha, _), m in zip(self.pending, mels, strict=True):
            items.append((f"{self.root}/{relative_file(LOGMEL, self.key, sha)}", m))
            self.shapes[(LOGMEL, sha)] = m.shape
        self.pending.clear()
        self.wait()  # at most one batch in flight; re-raises a failed write
        self.writing = self.writer.submit(_save_all, items)

    def wait(self) -> None:
        if self.writing is not None:
            self.writing.result()
            self.writing = None

    def close(self) -> None:
        self.writer.shutdown(wait=True)


def _save_all(items: list[tuple[str, np.ndarray]]) -> None:
    for file, m in items:
        save_array(file, m)


def _compute(params: Params, root: Path, keys: dict[str, str], jobs: list[_Job],
             shapes: dict[tuple[str, str], tuple[int, ...]]) -> dict[str, Any]:
    """Run the decode workers (and the main-process log-mel consumer on CUDA); fills `shapes`."""
    f = params.features
    sr = params.audio.sample_rate
    lay = _layout(params, jobs)
    facts = lay.facts
    import_threads: int | None = None
    if lay.device is not None:
        import torch

        import_threads = torch.get_num_threads()
    smile_kinds = sorted({k for j in jobs for k in j[3]})
    init_args = (str(root), sr, keys, f.egemaps, smile_kinds,
                 f.logmel if lay.device is not None and not lay.in_main else None,
                 lay.main_threads if lay.workers == 1 else lay.worker_threads,
                 str(lay.device) if lay.workers == 1 and lay.device is not None else "cpu", f.robustness)
    pool = None
    main: _MainLogMel | None = None
    stage_s = {"decode": 0.0, "egemaps": 0.0, "logmel": 0.0, "write": 0.0}
    try:
        if lay.workers > 1:
            # The pool starts before anything reaches a GPU, so forked workers inherit no CUDA state.
            pool = _mp_context().Pool(lay.workers, _init_worker, init_args)
            results: Iterable[tuple[list[_Done], dict[str, float]]] = pool.imap_unordered(_work_chunk, lay.chunks)
        else:
            _init_worker(*init_args)
            results = map(_work_chunk, lay.chunks)
        if lay.in_main:
            main = _MainLogMel(params, root, keys, lay.device, lay.main_threads, shapes, stage_s)
        for sha, path, wave, n, saved, nonfinite, err in _clips(results, stage_s, len(jobs)):
            if err is not None:
                raise audio.AudioError(path, f"{err} (features stage)")
            facts["audio_seconds"] += n / sr
            facts["nonfinite_arrays"] += nonfinite
            for kind, shape in saved.items():
                shapes[(kind, sha)] = shape
            if wave is not None and main is not None:
                main.add(sha, wave)
        if main is not None:
            main.flush()
            main.wait()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if main is not None:
            main.close()
        if pool is not None:
            pool.terminate()
        if import_threads is not None:
            import torch

            torch.set_num_threads(import_threads)
    facts["process_seconds"] = {k: round(v, 3) for k, v in stage_s.items()}
    return facts


def _compute_ssl(params: Params, root: Path, key: str, clips: pd.DataFrame,
                 shapes: dict[tuple[str, str], tuple[int, ...]]) -> dict[str, Any]:
    """The pretrained encoder in this process (it feeds one GPU, or uses the CPU's threads), on
    batches of clips decoded ahead by a thread pool; arrays saved as they come."""
    from affectflow.features.ssl import SslEncoder

    cfg = params.features.ssl
    sr = params.audio.sample_rate
    device = resolve_device(cfg.device, "features.ssl.device")
    t0 = time.perf_counter()
    encoder = SslEncoder(cfg, sr, device)
    load_s = time.perf_counter() - t0
    rows = list(zip(clips["sha256"], clips["path"], strict=True))
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
                save_array(f"{root}/{relative_file(SSL, key, sha)}", vec)
                shapes[(SSL, sha)] = vec.shape
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
