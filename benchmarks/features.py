"""Throughput of the features stage on RAVDESS, in audio-seconds per wall-second (× real time).

Rows: FLAC decode alone and a naive per-clip loop (decode + torch.stft log-mel + save, one process)
as baselines; `extract_features` for log-mel cold (log-mel in the workers, and batched in the main
process as on a GPU) and warm; eGeMAPS per clip in one process and `extract_features` cold and warm;
CUDA rows when a GPU is present. The openSMILE rows (`--smile`): per kind (ComParE, eGeMAPS) two
limits — openSMILE's own single-process speed on decoded audio × cores, through its wrapper's
`Smile.process_signal` (the issue's limit) and through one graph reset per clip as the workers run
it (the strict limit, faster) — then `extract_features`
with 1 and 2 workers as a share of it, and the scale-out in-process: 1 shard vs 4 shard tasks run
as the cluster runs them (one process each, `--workers` at a time, then the gather). CPU seconds add up every process (main + workers), so
"audio s / CPU s × parallel processes" bounds what the machine would give if nobody else used it —
useful on a shared box, where wall-clock figures mostly measure the neighbours. The unit tests never assert on timings; this script does not either.

    .venv/bin/python benchmarks/features.py                      # all 1440 clips (~1.5 h of audio)
    .venv/bin/python benchmarks/features.py --clips 200 --skip-naive-egemaps
    .venv/bin/python benchmarks/features.py --smile-only --clips 400   # the openSMILE / scale-out rows only
    .venv/bin/python benchmarks/features.py --smile-only --clips 400 --smile-kinds compare
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_now() -> float:
    """CPU seconds of this process (all threads) plus its reaped children (the pool workers)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c, t = cpu_now(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, cpu_now() - c, out


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--clips", type=int, default=0, help="use every k-th clip to keep about this many (0 = all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--naive-egemaps-every", type=int, default=4,
                    help="naive eGeMAPS loop on every k-th clip (it is slow; × real time is per audio second)")
    ap.add_argument("--skip-naive-egemaps", action="store_true")
    ap.add_argument("--smile-only", action="store_true", help="only the openSMILE limit and scale-out rows")
    ap.add_argument("--smile-kinds", nargs="+", default=["compare", "egemaps"], choices=["compare", "egemaps"],
                    help="the openSMILE kinds of those rows")
    return ap.parse_args()


def _shard_task(args: tuple[Any, str, str, int]) -> float:
    """One scale-out task in its own process, as a pod runs it; returns its wall seconds."""
    from affectflow.stages.features import extract_features

    params, manifest, out, shard = args
    t = time.perf_counter()
    extract_features(params, manifest, out, shard=shard)
    return time.perf_counter() - t


def smile_rows(a: argparse.Namespace, params: Any, manifest: Path, df: Any, tmp: Path, cores: int,
               row: Callable[..., None]) -> None:
    """Per openSMILE kind: its limit, `extract_features` at 1 and 2 workers against it, and 1 vs 4
    shards (in-process executors: one process per shard task, `a.workers` at a time)."""
    import multiprocessing as mp

    from affectflow import audio
    from affectflow.config import with_overrides
    from affectflow.features.egemaps import Egemaps
    from affectflow.stages.features import extract_features

    sr = params.audio.sample_rate
    clips = df.drop_duplicates("sha256")
    waves = [audio.load(p, sr) for p in clips["path"]]
    audio_s = float(clips["duration"].sum())
    for kind in a.smile_kinds:
        ex = Egemaps(params.features.egemaps, [kind])
        smile = ex.smiles[kind]
        wall, cpu, _ = measure(lambda smile=smile: [smile.process_signal(w, sr) for w in waves])
        wrapper_limit = audio_s / cpu * cores
        row(f"openSMILE {kind} alone, `Smile.process_signal` per clip, decoded audio, 1 process "
            f"(the issue's limit: × RT per CPU s × {cores} cores)",
            wall, cpu, audio_s, note=f"limit **{wrapper_limit:,.0f}×** real time", procs=cores)
        wall, cpu, _ = measure(lambda ex=ex, kind=kind: [ex(w, sr, [kind]) for w in waves])
        limit = audio_s / cpu * cores
        row(f"openSMILE {kind} alone, one graph reset per clip (what the workers run), decoded audio, "
            f"1 process (the strict limit)", wall, cpu, audio_s,
            note=f"limit **{limit:,.0f}×** real time ({limit / wrapper_limit:.0%} of the issue's)", procs=cores)
        p = with_overrides(params, {"features.kinds": [kind]})
        for workers in (1, a.workers):
            out = tmp / f"smile-{kind}-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            q = with_overrides(p, {"features.workers": workers})
            wall, cpu, res = measure(lambda q=q, out=out: extract_features(q, manifest, out))
            s = res.summary
            row(f"extract_features {kind}, cold, {workers} worker(s)", wall, cpu, audio_s, procs=workers,
                note=f"{audio_s / wall / limit:.0%} of the strict limit by wall, "
                     f"{audio_s / cpu * min(workers, cores) / limit:.0%} by CPU "
                     f"({audio_s / wall / wrapper_limit:.0%} / {audio_s / cpu * min(workers, cores) / wrapper_limit:.0%} "
                     f"of the issue's); first clip after "
                     f"{s.get('first_clip_seconds')} s; plan {s.get('plan_seconds')} s")
        if kind != "compare":
            continue
        q = with_overrides(p, {"features.workers": 1, "features.shards": 4})
        parts = [tmp / f"shard-{i}" for i in range(4)]
        for part in parts:
            shutil.rmtree(part, ignore_errors=True)
        store = tmp / "gathered"
        shutil.rmtree(store, ignore_errors=True)

        def scale_out(q: Any = q, parts: list[Path] = parts, store: Path = store) -> list[float]:
            with mp.get_context("spawn").Pool(a.workers) as pool:  # fresh processes, as pods start
                walls = pool.map(_shard_task, [(q, str(manifest), str(part), i) for i, part in enumerate(parts)])
            extract_features(q, manifest, store, previous=parts)
            return walls

        wall, cpu, walls = measure(scale_out)
        row(f"scale-out: 4 shard tasks ({a.workers} at a time, 1 worker each) + gather", wall, cpu, audio_s,
            procs=a.workers, note=f"{audio_s / wall / limit:.0%} of the limit by wall, "
                                  f"{audio_s / cpu * min(a.workers, cores) / limit:.0%} by CPU; shard tasks "
                                  f"{', '.join(f'{w:.1f}' for w in walls)} s")


def _setup(a: argparse.Namespace, tmp: Path) -> tuple[Any, Path, Any, float]:
    """RAVDESS ingested into `tmp` (every k-th clip with `--clips`): params, manifest, its rows, ingest seconds."""
    import pandas as pd

    from affectflow.config import load_params
    from affectflow.contracts.manifest import write_manifest
    from affectflow.stages.ingest import ingest

    base = {"paths.workdir": str(tmp), "paths.data_root": a.data_root,
            "ingest.corpora": [{"name": "ravdess", "adapter": "ravdess", "root": "ravdess"}],
            # all 1440 clips (the eight RAVDESS emotions), whatever classes the product trains on
            "ingest.classes": ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"],
            "features.workers": a.workers,
            "features.store": ""}  # every row is a cold extraction: no deployment store to reuse
    params = load_params(a.params, base)
    t = time.perf_counter()
    manifest = ingest(params, tmp / "ingest").manifest
    ingest_s = time.perf_counter() - t
    df = pd.read_parquet(manifest)
    if a.clips and a.clips < len(df):
        df = df.iloc[:: len(df) // a.clips].reset_index(drop=True)
        manifest = tmp / "ingest" / "subset.parquet"
        write_manifest(df, manifest)
    return params, manifest, df, ingest_s


def main() -> None:
    a = _args()
    import numpy as np
    import torch

    from affectflow import audio
    from affectflow.config import with_overrides
    from affectflow.contracts.feature_store import save_array
    from affectflow.features.egemaps import Egemaps
    from affectflow.features.logmel import LogMel
    from affectflow.stages.features import extract_features

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="features-bench-"))
    params, manifest, df, ingest_s = _setup(a, tmp)
    audio_s = float(df.drop_duplicates("sha256")["duration"].sum())
    sr = params.audio.sample_rate
    rows: list[dict[str, Any]] = []

    def row(name: str, wall: float, cpu: float, secs: float = audio_s, note: str = "", procs: int = 1) -> None:
        """procs: processes that compute in parallel; the bound assumes min(procs, cores) idle cores."""
        rows.append({"measurement": name, "audio s": round(secs), "wall s": round(wall, 2),
                     "× real time": round(secs / wall), "CPU s": round(cpu, 2),
                     "× RT per CPU s": round(secs / cpu) if cpu else "",
                     f"× RT bound, idle {cores}-core box": round(secs / cpu * min(procs, cores)) if cpu else "",
                     "note": note})
        print(f"  {name}: {secs / wall:,.0f}× real time ({wall:.2f} s wall, {cpu:.2f} s CPU)", flush=True)

    if a.smile_only:
        smile_rows(a, params, manifest, df, tmp, cores, row)
        _print_table(rows, f"RAVDESS: {len(df)} clips, {audio_s / 3600:.2f} h audio; {cores} CPU cores", load_before)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    paths = df.drop_duplicates("sha256")["path"].tolist()
    torch.set_num_threads(1)
    wall, cpu, _ = measure(lambda: [audio.load(p, sr) for p in paths])
    row("FLAC decode + resample only, 1 process", wall, cpu)

    naive_dir = tmp / "naive"
    lm = LogMel(params.features.logmel, sr)

    def naive_logmel() -> None:
        for i, p in enumerate(paths):
            save_array(naive_dir / f"{i}.npy", lm.reference(audio.load(p, sr)))

    wall, cpu, _ = measure(naive_logmel)
    row("naive: per-clip decode + torch.stft log-mel + save, 1 process", wall, cpu)

    def run(name: str, overrides: dict[str, Any], out: Path, note: str = "",
            fresh: bool = True) -> tuple[dict[str, Any], float]:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        p = with_overrides(params, overrides)
        wall, cpu, res = measure(lambda: extract_features(p, manifest, out))
        s = res.summary
        computed = s["audio_seconds_computed"] or audio_s
        extra = f"logmel in {s['logmel_in']}, {s.get('torch_threads')} thread(s)" if "logmel_in" in s else ""
        row(name, wall, cpu, computed, "; ".join(x for x in (note, extra) if x), procs=max(1, a.workers))
        return s, wall

    lm_over = {"features.kinds": ["logmel"], "features.device": "cpu"}
    cold, cold_wall = run(f"extract_features log-mel, cold, {a.workers} workers",
                          {**lm_over, "features.logmel_in": "workers"}, tmp / "f-workers")
    _, warm_wall = run("extract_features log-mel, warm (all cached)", {**lm_over, "features.logmel_in": "workers"},
                       tmp / "f-workers", fresh=False)
    rows[-1]["note"] = f"{warm_wall / cold_wall:.1%} of the cold run"
    run(f"extract_features log-mel, cold, batched in main process (CPU), {a.workers} workers",
        {**lm_over, "features.logmel_in": "main"}, tmp / "f-main")
    if torch.cuda.is_available():
        run("extract_features log-mel, cold, CUDA (batched in main)", {**lm_over, "features.device": "cuda"},
            tmp / "f-cuda", note=torch.cuda.get_device_name(0))

    if not a.skip_naive_egemaps:
        sub = paths[:: a.naive_egemaps_every]
        sub_s = float(df.drop_duplicates("sha256")["duration"].iloc[:: a.naive_egemaps_every].sum())
        ex = Egemaps(params.features.egemaps)
        wall, cpu, _ = measure(lambda: [np.save(naive_dir / "e.npy", ex(audio.load(p, sr), sr)["egemaps"]) for p in sub])
        row(f"naive: per-clip eGeMAPS functionals, 1 process ({len(sub)} clips)", wall, cpu, sub_s)

    eg_over = {"features.kinds": ["egemaps"]}
    _, eg_cold = run(f"extract_features eGeMAPS functionals, cold, {a.workers} workers", eg_over, tmp / "f-eg")
    _, eg_warm = run("extract_features eGeMAPS functionals, warm", eg_over, tmp / "f-eg", fresh=False)
    rows[-1]["note"] = f"{eg_warm / eg_cold:.1%} of the cold run"
    smile_rows(a, params, manifest, df, tmp, cores, row)

    _print_table(rows, f"RAVDESS: {len(df)} clips, {audio_s / 3600:.2f} h audio; ingest took {ingest_s:.1f} s "
                 f"(not included)\ntorch {torch.__version__}, {cores} CPU cores; cold log-mel summary: {cold}",
                 load_before)
    shutil.rmtree(tmp, ignore_errors=True)


def _print_table(rows: list[dict[str, Any]], header: str, load_before: str) -> None:
    import pandas as pd

    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    table = pd.DataFrame(rows)
    print()
    print(header)
    print(f"load before: {load_before}\nload after:  {load_after}\n")
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
