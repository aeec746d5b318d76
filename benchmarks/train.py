"""Training throughput of the recognizer: samples/s and epoch time on CPU and, when present, GPU.

Runs the real training loop (`affectflow.stages.train.stage.plan` + `fit`: Ray Train local mode, the same
`train_loop_per_worker` as `affectflow train`) on one speaker-independent RAVDESS fold and reads the
per-epoch timings the loop records (training samples/s, training and validation seconds). On CUDA
it also samples GPU utilisation (nvidia-smi, else torch.cuda.utilization) and peak memory.
`--full` trains the configured epochs (a whole fold, early stopping included) and reports the wall
time. No MLflow, no evaluation: only the loop is timed. Nothing here asserts on timings.

    .venv/bin/python benchmarks/train.py --manifest artifacts/ingest/manifest.parquet --features artifacts/features
    .venv/bin/python benchmarks/train.py --fake                 # random RAVDESS-shaped features
    .venv/bin/python benchmarks/train.py --device cuda --full   # on a GPU machine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RAVDESS_CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
GPU_POLL_S = 0.2


def fake_corpus(root: Path, params: Any, speakers: int = 24, per_class: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """A manifest + features folder shaped like RAVDESS (24 speakers, 60 clips each, 64 x 294-528
    log-mel frames, 88 eGeMAPS values) of random numbers: throughput does not depend on content."""
    from affectflow.contracts.feature_store import feature_path, relative_file, save_array, write_index
    from affectflow.contracts.manifest import COLUMNS, write_manifest
    from affectflow.contracts.splits import apply_splits
    from affectflow.stages.features import feature_keys

    rng = np.random.default_rng(seed)
    keys = feature_keys(params.model_copy(update={"features": params.features.model_copy(
        update={"kinds": ["logmel", "egemaps"]})}))
    lk, ek = keys["logmel"], keys["egemaps"]
    rows, index = [], []
    n_mels = params.features.logmel.n_mels
    for s in range(1, speakers + 1):
        for c in RAVDESS_CLASSES:
            for i in range(per_class // 2 if c == "neutral" else per_class):
                uid = f"ravdess/{s:02d}-{c}-{i}"
                sha = hashlib.sha256(uid.encode()).hexdigest()
                frames = int(rng.integers(294, 529))
                save_array(feature_path(root / "features", "logmel", lk, sha),
                           rng.normal(-5, 2, (n_mels, frames)).astype(np.float32))
                save_array(feature_path(root / "features", "egemaps", ek, sha), rng.normal(0, 1, 88).astype(np.float32))
                index += [{"utt_id": uid, "kind": "logmel", "key": lk, "file": relative_file("logmel", lk, sha),
                           "shape": [n_mels, frames]},
                          {"utt_id": uid, "kind": "egemaps", "key": ek, "file": relative_file("egemaps", ek, sha),
                           "shape": [88]}]
                rows.append({"utt_id": uid, "path": f"/fake/{uid}.wav", "corpus": "ravdess", "role": "source",
                             "speaker": f"ravdess/{s:02d}", "gender": "male" if s % 2 else "female", "label": c,
                             "emotion": c, "valence": np.nan, "arousal": np.nan, "duration": frames / 100,
                             "sample_rate": 48000, "channels": 1, "sha256": sha, "fold": -1, "split": "train"})
    write_index(root / "features", pd.DataFrame(index))
    df = apply_splits(pd.DataFrame(rows)[COLUMNS], params.splits)
    write_manifest(df, root / "manifest.parquet")
    return root / "manifest.parquet", root / "features"


class GpuSampler:
    """Background sampling of GPU utilisation (%) and memory (MiB) while training runs."""

    def __init__(self, index: int = 0):
        self.index = index
        self.util: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "torch.cuda.utilization"

    def _sample(self) -> tuple[float, float] | None:
        if self.source == "nvidia-smi":
            out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            if out.returncode != 0:
                return None
            u, m = out.stdout.strip().split(",")[:2]
            return float(u), float(m)
        import torch

        try:
            return float(torch.cuda.utilization(self.index)), float(torch.cuda.memory_reserved(self.index) / 2**20)
        except Exception:  # pynvml missing
            return None

    def _run(self) -> None:
        while not self._stop.wait(GPU_POLL_S):
            s = self._sample()
            if s:
                self.util.append(s[0])
                self.mem.append(s[1])

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(params: Any, manifest: Path, features: Path, out: Path) -> dict[str, Any]:
    import torch

    from affectflow.stages.train.stage import fit, plan  # the train stage's steps, without its MLflow run

    p = plan(params, manifest, features, out)
    cuda = params.train.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    if cuda:
        with GpuSampler(torch.cuda.current_device()) as gpu:
            outcome = fit(params.train, p.worker, p.run_name)
    else:
        gpu = None
        outcome = fit(params.train, p.worker, p.run_name)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = outcome["history"]
    steady = hist[1:] or hist  # the first epoch pays for warm-up (allocator, cuDNN autotune)
    res = {
        "device": outcome["device"], "threads": torch.get_num_threads(), "model": params.train.model,
        "channels": params.train.cnn.channels, "crop_frames": params.train.crop_frames,
        "batch_size": params.train.batch_size, "n_train": len(p.config["train_ids"]), "n_val": len(p.config["val_ids"]),
        "epochs": len(hist), "wall_s": round(wall, 1),
        "train_samples_per_s": round(statistics.median(h["train_samples_per_s"] for h in steady), 1),
        "train_epoch_s": round(statistics.median(h["train_seconds"] for h in steady), 2),
        "val_s": round(statistics.median(h["val_seconds"] for h in steady), 2),
        "epoch_s": round(statistics.median(h["train_seconds"] + h["val_seconds"] for h in steady), 2),
        "best_val_uar": round(outcome["best_uar"], 4),
        # CPU seconds of this process (all threads) over the whole fit, loading included: on a shared
        # box wall time measures the neighbours too, CPU time measures the work.
        "cpu_s": round(cpu, 1), "cpu_s_per_epoch": round(cpu / max(len(hist), 1), 1),
    }
    if cuda:
        res["gpu"] = torch.cuda.get_device_name()
        res["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        if gpu is not None and gpu.util:
            res["gpu_util_mean"] = round(statistics.mean(gpu.util), 1)
            res["gpu_util_max"] = round(max(gpu.util), 1)
            res["gpu_util_source"] = gpu.source
    return res


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["device", "threads", "model", "crop_frames", "batch_size", "epochs", "train_samples_per_s",
            "train_epoch_s", "val_s", "epoch_s", "wall_s", "cpu_s_per_epoch", "gpu_util_mean", "gpu_util_max", "peak_mem_mib"]
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--manifest", type=Path, default=REPO / "artifacts" / "ingest" / "manifest.parquet")
    ap.add_argument("--features", type=Path, default=REPO / "artifacts" / "features")
    ap.add_argument("--fake", action="store_true", help="random RAVDESS-shaped features (no corpus needed)")
    ap.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch CPU threads, one CPU row per value (default: 1 2)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs to time (ignored with --full)")
    ap.add_argument("--full", action="store_true", help="train the configured epochs: a whole fold")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, help="append the result rows to this JSON-lines file")
    a = ap.parse_args()

    os.environ.setdefault("AFFECTFLOW_PROGRESS", "0")
    import torch

    from affectflow.config import load_params

    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    try:
        params = load_params(a.params, a.overrides)
        manifest, features = a.manifest, a.features
        if a.fake or not manifest.exists():
            print(f"using random RAVDESS-shaped features in {tmp}" + ("" if a.fake else f" ({manifest} not found)"))
            manifest, features = fake_corpus(tmp, params)
        devices = ["cpu", "cuda"] if a.device == "both" else [a.device]
        if "cuda" in devices and not torch.cuda.is_available():
            print("no CUDA device: GPU rows skipped")
            devices = [d for d in devices if d != "cuda"]
        rows = []
        runs = [(dev, t) for dev in devices for t in (a.threads if dev == "cpu" else a.threads[:1])]
        for dev, threads in runs:
            torch.set_num_threads(threads)
            ov = {"train.device": dev, "train.num_workers": 0, "train.threads": threads}
            if not a.full:
                ov |= {"train.epochs": a.epochs, "train.patience": a.epochs}
            p = load_params(a.params, [*a.overrides, *(f"{k}={json.dumps(v)}" for k, v in ov.items())])
            rows.append(run(p, manifest, features, tmp / f"{dev}-{threads}"))
            print(json.dumps(rows[-1]))
        print()
        print(table(rows))
        if a.json:
            with a.json.open("a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
