"""Extraction throughput of the `ssl` feature kind (a frozen pretrained speech encoder), in
audio-seconds per wall-second (x real time), on generated clips.

No checkpoint can be downloaded here, so the encoders are randomly initialised from
`transformers` configs: the tiny 2-layer test encoder, and WavLM-base's architecture at full size
(12 layers x 768, ~95 M parameters; random weights run at the speed trained ones do). Accuracy with
a real checkpoint is not measured in this repository. CUDA rows (bf16) print themselves when a GPU
is visible.

    .venv/bin/python benchmarks/ssl_encoders.py                    # 32 clips of 3 s
    .venv/bin/python benchmarks/ssl_encoders.py --clips 64 --seconds 5 --threads 2
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()

    import torch

    from affectflow.config import SslConfig
    from affectflow.corpora.demo import utterance
    from affectflow.features.ssl import SslEncoder

    torch.set_num_threads(a.threads)
    waves = [utterance("happy", s, s, 16000, a.seconds) for s in range(a.clips)]
    audio_s = sum(len(w) for w in waves) / 16000
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("tiny", "wavlm-base-size"):
            folder = save_encoder(kind, Path(tmp) / kind)
            for device in devices:
                enc = SslEncoder(SslConfig(checkpoint=str(folder), batch_size=a.batch_size), 16000, device)
                enc(waves[:2])  # warm-up (allocator, kernels)
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = enc(waves)
                if device == "cuda":
                    torch.cuda.synchronize()
                wall = time.perf_counter() - t
                rows.append((kind, device, sum(p.numel() for p in enc.model.parameters()) / 1e6, enc.dim,
                             audio_s / wall, wall))
                assert all(np.isfinite(v).all() for v in out)
    print(f"{a.clips} clips x {a.seconds:.1f} s = {audio_s:.0f} s of audio; torch {torch.__version__}, "
          f"{a.threads} CPU thread(s); load: {load}\n")
    print("| encoder | device | params (M) | vector | x real time | wall s |")
    print("|---|---|--:|--:|--:|--:|")
    for kind, device, params, dim, xrt, wall in rows:
        print(f"| {kind} | {device} | {params:.1f} | {dim} | {xrt:,.0f} | {wall:.2f} |")


if __name__ == "__main__":
    main()
