"""Overhead of the prediction log per served request (issue 28: target <= 2 ms p50 added).

Two measurements:
1. the hooks alone, per one-clip request, for three feature shapes (eGeMAPS (88,), ComParE (6373,),
   log-mel (64, 300 frames)): `Recorder.observe` (summary + moments, inside `predict_features`),
   `record_request` (the record) and the Parquet part written every `flush_records` requests, its
   cost spread over them; p50 / p95 over `--requests` requests;
2. end to end: the MLflow pyfunc scoring one-clip requests (a tiny log-mel CNN, 1 s clips) with and
   without `prediction_log`, alternating, p50 of each and the difference.
3. the hooks for a long clip scored in `--windows` windows (log-mel): its record also keeps each
   window's moments (what the deployment statistics consumed, for an exact rebuild).

    python benchmarks/prediction_log.py --requests 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from affectflow.config import MonitorConfig
from affectflow.models.data import NormStats
from affectflow.serving.prediction_log import attach_recorder, record_request

SHAPES = {"egemaps": (88,), "compare": (6373,), "logmel": (64, 300)}
CLASSES = ["angry", "happy", "neutral", "sad"]


def hooks(kind: str, shape: tuple[int, ...], requests: int, folder: Path, windows: int = 1) -> dict[str, float]:
    dim = shape[0]
    rec = SimpleNamespace(meta=SimpleNamespace(
        normalization=NormStats("global", [0.0] * dim, [1.0] * dim).as_dict(), feature=kind,
        feature_key=f"{kind}-bench", classes=CLASSES, sample_rate=16000))
    log = folder / f"{kind}-{windows}"
    recorder = attach_recorder(rec, log, MonitorConfig(), "bench", "pyfunc")
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=shape).astype(np.float32) for _ in range(64)]  # distinct clips: honest compression
    wave = rng.normal(size=16000).astype(np.float32) * 0.1
    probs = np.full((1, 4), 0.25, np.float32)
    times = []
    for i in range(requests):
        clip = [xs[(i + k) % len(xs)] for k in range(windows)]
        t0 = time.perf_counter()
        recorder.observe(clip)
        record_request(rec, [([0], [wave], 16000)], probs, [0], [0] * windows)
        times.append(time.perf_counter() - t0)
    recorder.log.flush()
    ms = 1000 * np.asarray(times)
    parts = list(log.rglob("*.parquet"))
    return {"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
            "parts": len(parts), "bytes_per_record": sum(p.stat().st_size for p in parts) / requests}


def end_to_end(requests: int, folder: Path) -> dict[str, float]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_predict import make_model_dir
    from test_prediction_log import _pyfunc, _waves  # the tests' tiny model and pyfunc loader

    model = make_model_dir(folder / "model", seed=1)
    with_log, without = _pyfunc(model, folder / "e2e-log"), _pyfunc(model, folder / "unused")
    without.rec.recorder = None
    waves = _waves(16)
    frames = [pd.DataFrame({"audio": [w.tolist()], "sample_rate": [16000]}) for w in waves]
    t = {"with": [], "without": []}
    for i in range(requests):
        for name, py in (("with", with_log), ("without", without)) if i % 2 else (("without", without), ("with", with_log)):
            t0 = time.perf_counter()
            py.predict(None, frames[i % len(frames)])
            t[name].append(time.perf_counter() - t0)
    with_log.rec.recorder.log.flush()
    p50 = {k: 1000 * float(np.median(v)) for k, v in t.items()}
    return {"p50_with_ms": p50["with"], "p50_without_ms": p50["without"], "p50_added_ms": p50["with"] - p50["without"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--e2e-requests", type=int, default=300, help="0: skip the end-to-end measurement")
    ap.add_argument("--windows", type=int, default=10, help="windows of the long clip (log-mel)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, shape in SHAPES.items():
            r = hooks(kind, shape, a.requests, Path(tmp))
            print(f"hooks {kind:8s} {shape}: p50 {r['p50_ms']:.3f} ms, p95 {r['p95_ms']:.3f} ms, mean {r['mean_ms']:.3f} ms "
                  f"(a part written every 256, in the background); {r['bytes_per_record']:.0f} bytes/record on disk")
        r = hooks("logmel", SHAPES["logmel"], a.requests, Path(tmp), a.windows)
        print(f"hooks logmel, a clip of {a.windows} windows: p50 {r['p50_ms']:.3f} ms, p95 {r['p95_ms']:.3f} ms, "
              f"mean {r['mean_ms']:.3f} ms; {r['bytes_per_record']:.0f} bytes/record on disk")
        if a.e2e_requests <= 0:
            return
        e = end_to_end(a.e2e_requests, Path(tmp))
        print(f"pyfunc one-clip request, tiny log-mel CNN: p50 {e['p50_without_ms']:.2f} ms without the log, "
              f"{e['p50_with_ms']:.2f} ms with it: {e['p50_added_ms']:+.2f} ms")


if __name__ == "__main__":
    main()
