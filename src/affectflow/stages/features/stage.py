"""The features stage's run: compute the plan's shards (worker processes, log-mel in the main
process or the workers, the ssl encoder first), write each shard as it completes, then the index."""

from __future__ import annotations

import math
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
    SUMMARY,
    ShardRecord,
    write_index,
    write_shard,
)
from affectflow.features.keys import LOGMEL, SSL
from affectflow.runtime.device import resolve_device, torch_threads
from affectflow.runtime.progress import progress
from affectflow.stages.features.shards import SMILE_CHUNK, FeaturesError, plan
from affectflow.stages.features.store import publish, store_location
from affectflow.stages.features.worker import _cpu_count, _Done, _init_worker, _Job, _mp_context, _work_chunk
from affectflow.stages.spec import Inputs, StageOutput
from affectflow.storage import atomic_write_json


@dataclass
class FeaturesResult(StageOutput):
    @property
    def index(self) -> Path:
        return self.out_dir / INDEX


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
    return FeaturesResult(root, summary)


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
    """The pretrained encoder in this process, on batches of clips; fills `arrays` (clip sha256 ->
    vector). On a GPU one lane feeds it while a thread pool decodes ahead. On the CPU,
    `features.workers` lanes (threads sharing one copy of the encoder) each decode and encode their
    own batches with the cores shared out as torch threads (one each on two cores): real clips all
    differ in length, so batches are single clips, whose small matrix products scale badly over
    threads (two threads on one Whisper-base clip cost ~4x the CPU time of one, and more on a
    loaded box: benchmarks/RESULTS.md, "The default decision")."""
    import torch

    from affectflow.features.ssl import SslEncoder

    cfg = params.features.ssl
    sr = params.audio.sample_rate
    device = resolve_device(cfg.device, "features.ssl.device")
    t0 = time.perf_counter()
    encoder = SslEncoder(cfg, sr, device)
    load_s = time.perf_counter() - t0
    rows = [(j[0], j[1]) for j in jobs]
    batch = max(cfg.batch_size, 1)
    chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    cores = _cpu_count()
    lanes = max(1, min(params.features.workers, cores, len(chunks))) if device.type == "cpu" else 1
    threads = (params.features.threads or max(1, cores // lanes)) if lanes > 1 else torch.get_num_threads()
    with torch_threads(threads):
        if lanes > 1:
            def lane(chunk: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
                return chunk, encoder([audio.load(path, sr) for _, path in chunk])

            with ThreadPoolExecutor(max_workers=lanes) as pool:
                for chunk, vecs in progress(pool.map(lane, chunks), "features ssl", total=len(chunks), unit="batch"):
                    arrays.update((sha, vec) for (sha, _), vec in zip(chunk, vecs, strict=True))
        else:
            _one_lane(encoder, chunks, sr, params.features.workers, arrays)
    return {"device": str(device), "dim": encoder.dim, "layers": encoder.layers, "layers_run": encoder.layers_run,
            "lanes": lanes, "torch_threads": threads, "load_seconds": round(load_s, 2), "seconds": round(time.perf_counter() - t0, 2)}


def _one_lane(encoder: Any, chunks: list[list[tuple[str, str]]], sr: int, decoders: int,
              arrays: dict[str, np.ndarray]) -> None:
    """One lane (a GPU, or one CPU core): batches decoded ahead by `decoders` threads."""
    with ThreadPoolExecutor(max_workers=max(1, decoders)) as pool, ThreadPoolExecutor(max_workers=1) as reader:
        def decode(chunk: list[tuple[str, str]]) -> list[np.ndarray]:
            return list(pool.map(lambda r: audio.load(r[1], sr), chunk))

        ahead = reader.submit(decode, chunks[0]) if chunks else None
        for i, chunk in enumerate(progress(chunks, "features ssl", unit="batch")):
            assert ahead is not None
            waves = ahead.result()
            ahead = reader.submit(decode, chunks[i + 1]) if i + 1 < len(chunks) else None
            for (sha, _), vec in zip(chunk, encoder(waves), strict=True):
                arrays[sha] = vec


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
