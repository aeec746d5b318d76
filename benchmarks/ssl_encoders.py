"""Extraction throughput of the `ssl` feature kind (a frozen pretrained speech encoder), in
audio-seconds per wall-second (x real time), on generated clips.

No WavLM checkpoint can be downloaded here, so those encoders are randomly initialised from
`transformers` configs: the tiny 2-layer test encoder, and WavLM-base's architecture at full size
(12 layers x 768, ~95 M parameters; random weights run at the speed trained ones do); their accuracy
is not measured (the Whisper front-end's is: benchmarks/whisper_loco.py). CUDA rows (bf16) print
themselves when a GPU is visible.

    .venv/bin/python benchmarks/ssl_encoders.py                    # 32 clips of 3 s
    .venv/bin/python benchmarks/ssl_encoders.py --clips 64 --seconds 5 --threads 2
    .venv/bin/python benchmarks/ssl_encoders.py --encoders whisper-base whisper-base-padded
    .venv/bin/python benchmarks/ssl_encoders.py --encoders whisper-base --layers all 0-3 --threads 1

Whisper rows use the real weights of the `whisper-weights` extra (`pkg:whisper-base`,
`pkg:whisper-tiny.en`; skipped when absent): `-padded` pads every clip to Whisper's 30 s window as
it was trained, the plain row restricts the positions to the clip (`features.ssl.window`). Each row
runs in its own process, so the peak RSS is that encoder's; CPU seconds are given beside the wall
time because the box is shared (wall time depends on the load, CPU time much less). `--layers`
gives each encoder one row per set of kept hidden states (`features.ssl.layers`; `all`, or `0-3`:
the encoder stops after the highest one).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def save_encoder(kind: str, folder: Path) -> Path:
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    if kind == "tiny":
        cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    else:
        cfg = WavLMConfig()  # WavLM-base's architecture
    WavLMModel(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return folder


ENCODERS = ("tiny", "wavlm-base-size", "whisper-base", "whisper-base-padded", "whisper-tiny.en",
            "whisper-tiny.en-padded")


def parse_layers(text: str) -> list[int]:
    """`all` -> [] (every hidden state); `0-3` -> [0, 1, 2, 3]; `3` -> [3]."""
    if text == "all":
        return []
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def encoder_config(kind: str, tmp: Path, batch_size: int, layers: list[int]):
    """The `features.ssl` settings of one row: a random encoder saved to `tmp`, or a packaged
    Whisper (`pkg:`), its positions trimmed to the clip or padded to 30 s."""
    from affectflow.config import SslConfig

    if kind.startswith("whisper-"):
        name = kind.removesuffix("-padded")
        return SslConfig(checkpoint=f"pkg:{name}", batch_size=batch_size, layers=layers,
                         window="padded" if kind.endswith("-padded") else "clip")
    return SslConfig(checkpoint=str(save_encoder(kind, tmp / kind)), batch_size=batch_size, layers=layers)


def measure(kind: str, device: str, clips: int, seconds: float, threads: int, batch_size: int,
            layers: list[int]) -> tuple:
    """One row, in its own process (peak RSS is the process's): params (M), vector size,
    x real time, wall s, CPU s, peak RSS (MB), peak CUDA memory (MB)."""
    import resource

    import torch

    from affectflow.corpora.demo import utterance
    from affectflow.features.ssl import SslEncoder

    torch.set_num_threads(threads)
    waves = [utterance("happy", s, s, 16000, seconds) for s in range(clips)]
    with tempfile.TemporaryDirectory() as tmp:
        enc = SslEncoder(encoder_config(kind, Path(tmp), batch_size, layers), 16000, device)
        enc(waves[:2])  # warm-up (allocator, kernels)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t, c = time.perf_counter(), time.process_time()
        out = enc(waves)
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert all(np.isfinite(v).all() for v in out)
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
        params = sum(p.numel() for p in enc.model.parameters()) / 1e6
        return (params, enc.dim, clips * seconds / wall, wall, cpu,
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, gpu_mb)


def packaged(kind: str) -> bool:
    from importlib import metadata

    from affectflow.features.packaged import PACKAGED

    if not kind.startswith("whisper-"):
        return True
    try:
        return all(metadata.distribution(d) for d, _ in PACKAGED[kind.removesuffix("-padded")].model_parts)
    except metadata.PackageNotFoundError:
        return False


def main() -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    ap.add_argument("--layers", nargs="+", default=["all"], help="kept hidden states per row: all, 0-3, 3")
    a = ap.parse_args()

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for kind in a.encoders:
        if not packaged(kind):
            print(f"{kind}: skipped, the whisper-weights packages are not installed")
            continue
        for layers in a.layers:
            for device in devices:
                with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                    rows.append((kind, layers, device, *pool.submit(measure, kind, device, a.clips, a.seconds,
                                                                    a.threads, a.batch_size,
                                                                    parse_layers(layers)).result()))
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{a.clips} clips x {a.seconds:.1f} s = {a.clips * a.seconds:.0f} s of audio; torch {torch.__version__}, "
          f"{a.threads} CPU thread(s); load before: {load}; after: {load_after}\n")
    print("| encoder | layers | device | params run (M) | vector | x real time | wall s | CPU s | audio s per CPU s "
          "| peak RSS (MB) | peak CUDA (MB) |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for kind, layers, device, params, dim, xrt, wall, cpu, rss, gpu in rows:
        print(f"| {kind} | {layers} | {device} | {params:.1f} | {dim} | {xrt:,.1f} | {wall:.2f} | {cpu:.2f} | "
              f"{a.clips * a.seconds / cpu:,.1f} | {rss:,.0f} | {gpu:,.0f} |")


if __name__ == "__main__":
    main()
