"""DANN training speed: seconds per epoch of `affectflow.stages.pretrain.loop.train_dann` (the loop the
stage and `affectflow ablate dann` run), per encoder and device, with and without the adversary.

Inputs are random arrays of the real shapes (eGeMAPS: 88 values; log-mel: 64 bands × 3-5 s at
100 frames/s, cropped to train.crop_frames) and of the RAVDESS -> EmoDB sizes of one fold (source
training clips, EmoDB training speakers' clips), so the figures do not depend on the corpora
being present. CUDA rows appear when a GPU is visible (bf16 autocast as in the stage). The first
epoch is a warm-up and is not counted. No assertions: this prints a table for RESULTS.md.

    .venv/bin/python benchmarks/dann.py                       # both encoders, CPU (+ CUDA)
    .venv/bin/python benchmarks/dann.py --models egemaps_mlp --epochs 4 --threads 1
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
FEATURE_SHAPES = {"egemaps_mlp": (88,), "cnn_bigru": (64,)}
"""Per-clip feature size (log-mel adds a variable number of frames)."""
FRAMES = (300, 500)
"""Log-mel clip length range in frames (RAVDESS 2.9-5.3 s, EmoDB 1.2-9 s at a 10 ms hop)."""


def make_data(model: str, n_src: int, n_tgt: int, n_classes: int, seed: int):
    from affectflow.stages.pretrain.loop import LoopData

    rng = np.random.default_rng(seed)

    def clips(n: int) -> list[np.ndarray]:
        if model == "egemaps_mlp":
            return list(rng.normal(size=(n, *FEATURE_SHAPES[model])).astype(np.float32))
        return [rng.normal(size=(FEATURE_SHAPES[model][0], int(rng.integers(*FRAMES)))).astype(np.float32)
                for _ in range(n)]

    return LoopData(src_x=clips(n_src), src_y=rng.integers(0, n_classes, n_src), src_domain=np.zeros(n_src, np.int64),
                    src_speaker=rng.integers(0, 14, n_src), tgt_x=clips(n_tgt), tgt_domain=np.ones(n_tgt, np.int64),
                    tgt_speaker=rng.integers(14, 20, n_tgt), val_x=clips(n_src // 8),
                    val_y=rng.integers(0, n_classes, n_src // 8))


def run(model: str, device: str, adversarial: bool, epochs: int, a: argparse.Namespace) -> dict[str, float]:
    import torch

    from affectflow.config import load_params
    from affectflow.models import arch_config, build_model
    from affectflow.models.dann import Dann
    from affectflow.stages.pretrain.loop import train_dann

    params = load_params(a.params, {"train.model": model, "pretrain.epochs": epochs})
    cfg, tc = params.pretrain, params.train
    data = make_data(model, a.source_clips, a.target_clips, a.classes, seed=0)
    dim = FEATURE_SHAPES[model][0]
    torch.manual_seed(0)
    dann = Dann(build_model(model, arch_config(tc), dim, a.classes), 2, 0, cfg.domain_hidden, cfg.head_dropout)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_epoch(_epoch: int, _m: dict[str, float]) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    train_dann(dann, data, cfg, tc, torch.device(device), adversarial, seed=0, desc=f"{model} {device}",
               on_epoch=on_epoch)
    steady = times[1:] or times
    per_epoch = statistics.median(steady)
    clips = a.source_clips * (2 if adversarial else 1)
    return {"epoch_s": per_epoch, "clips_per_s": clips / per_epoch, "run_s": per_epoch * cfg.epochs,
            "epochs": cfg.epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--models", nargs="+", default=["egemaps_mlp", "cnn_bigru"], choices=list(FEATURE_SHAPES))
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed per row (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--source-clips", type=int, default=392, help="RAVDESS 4-class training clips of one fold")
    ap.add_argument("--target-clips", type=int, default=190, help="EmoDB training speakers' clips of one fold")
    ap.add_argument("--classes", type=int, default=4)
    a = ap.parse_args()
    os.environ.setdefault("AFFECTFLOW_PROGRESS", "0")

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from affectflow.config import load_params

    full_epochs = load_params(a.params).pretrain.epochs
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"machine: {platform.node()} · {os.cpu_count()} CPUs · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · GPU: {gpu}")
    print(f"data: {a.source_clips} source + {a.target_clips} target clips; pretrain.epochs = {full_epochs}\n")
    print(f"| encoder | device | training | s / epoch | clips / s | est. s per {full_epochs}-epoch run |")
    print("|---|---|---|---|---|---|")
    for model in a.models:
        for device in devices:
            for adversarial in (False, True):
                r = run(model, device, adversarial, a.epochs, a)
                name = "DANN (source + target)" if adversarial else "source-only"
                print(f"| {model} | {device} | {name} | {r['epoch_s']:.3f} | {r['clips_per_s']:.0f} | "
                      f"{r['epoch_s'] * full_epochs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
