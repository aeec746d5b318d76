"""GAN training speed: seconds per epoch of the augment stage's generators, per feature and device.

Rows: conditional WGAN-GP and AAEC on eGeMAPS functionals (88 values) and on log-mel segments
(64 bands × `augment.segment_frames` frames), with the RAVDESS sizes of one fold (840 training clips;
log-mel: `segments_per_clip` crops each; 10 % held out for realness calibration, as in the stage).
Inputs are random standardised arrays of those shapes (speed does not depend on the values), so the
figures do not need the corpora. Hyper-parameters come from params.yaml (`--set` overrides them).
CUDA rows appear when a GPU is visible (bf16 autocast for forwards as in the stage; the gradient
penalty stays float32). The first epoch is a warm-up and is not counted. No assertions: this prints a
table (Markdown) for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/augment.py                       # all rows, CPU (+ CUDA when present)
    .venv/bin/python benchmarks/augment.py --features egemaps --epochs 6 --threads 1
    .venv/bin/python benchmarks/augment.py --devices cuda --set augment.mixed_precision=false
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
N_CLIPS = 840
"""Training clips of one RAVDESS fold (14 of 24 actors × 60 clips)."""
CALIBRATION = 0.1
N_MELS = 64


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_data(feature: str, segments_per_clip: int, frames: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    n = round(N_CLIPS * (1 - CALIBRATION)) * (segments_per_clip if feature == "logmel" else 1)
    shape = (88,) if feature == "egemaps" else (N_MELS, frames)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def bench(generator: str, feature: str, device_name: str, epochs: int, overrides: list[str]) -> dict:
    import torch

    from affectflow.config import load_params
    from affectflow.models.aaec import train_aaec
    from affectflow.models.wgan import train_wgan

    params = load_params(REPO / "params.yaml", [*overrides, f"augment.epochs={epochs + 1}",
                                                f"augment.generator={generator}", f"augment.feature={feature}"])
    cfg = params.augment
    X, y = make_data(feature, cfg.segments_per_clip, cfg.segment_frames, len(params.ingest.classes), cfg.seed)
    device = torch.device(device_name)
    fn = train_wgan if generator == "wgan_gp" else train_aaec
    t0 = time.perf_counter()
    model = fn(X, y, len(params.ingest.classes), cfg, device)
    wall = time.perf_counter() - t0
    secs = model.history.epoch_seconds[1:]  # epoch 0 = warm-up (allocations, cuDNN autotune, lazy imports)
    med = statistics.median(secs)
    cpu = statistics.median(model.history.epoch_cpu_seconds[1:])
    return {"generator": generator, "feature": feature, "device": device_name, "n": len(X),
            "shape": "×".join(map(str, X.shape[1:])), "s_per_epoch": med, "cpu_per_epoch": cpu,
            "min": min(secs), "max": max(secs), "samples_per_s": len(X) / med, "wall": wall,
            "amp": bool(cfg.mixed_precision and device.type == "cuda")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generators", nargs="+", default=["wgan_gp", "aaec"])
    ap.add_argument("--features", nargs="+", default=["egemaps", "logmel"])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu + cuda if present)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}; CPU: {cpu_name()} ({os.cpu_count()} logical cores visible, "
          f"{torch.get_num_threads()} torch threads); load average {os.getloadavg()[0]:.1f}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    rows = []
    for dev in devices:
        for feature in a.features:
            for gen in a.generators:
                r = bench(gen, feature, dev, a.epochs, a.overrides)
                rows.append(r)
                print(f"  {gen} {feature} {dev}: {r['s_per_epoch']:.3f} s/epoch", flush=True)
    print("\n| generator | feature | samples × shape | device | wall s / epoch (median) | range | CPU s / epoch "
          "| samples / s |")
    print("|---|---|---|---|---:|---|---:|---:|")
    for r in rows:
        dev = r["device"] + (" (bf16)" if r["amp"] else "")
        print(f"| {r['generator']} | {r['feature']} | {r['n']} × {r['shape']} | {dev} | {r['s_per_epoch']:.3f} | "
              f"{r['min']:.3f}–{r['max']:.3f} | {r['cpu_per_epoch']:.3f} | {r['samples_per_s']:.0f} |")


if __name__ == "__main__":
    main()
