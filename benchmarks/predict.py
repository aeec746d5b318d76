"""Prediction speed: clips per second in batch (`affectflow.serving.predict`), and p50/p95 latency of
single-clip requests to the registered model behind `mlflow models serve` on CPU.

The model is a `cnn_bigru` folder with the architecture of params.yaml (train.cnn) and log-mel of
features.logmel, with seeded (untrained) weights: speed does not depend on the weights. It is logged
as the affectflow pyfunc into a temporary sqlite store, registered, given the `champion` alias and
served from `models:/<name>@champion` exactly as a user would. Clips are RAVDESS files from
../shared/data when present (48 kHz FLAC, decoded and resampled to 16 kHz inside the timing), else
generated ones. Requests carry either a 16 kHz waveform as JSON or the file itself as `audio_b64`
(`affectflow.serving.predict.invocations_payload`), one clip each.
The long-file rows score one generated file in windows (predict.max_window_s / hop_s) in a fresh
process and report its peak RSS, to show memory does not grow with the file's length.

    .venv/bin/python benchmarks/predict.py                          # 200 clips, 100 requests
    .venv/bin/python benchmarks/predict.py --clips 100 --requests 30 --skip-long
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "affectflow-bench"
STARTUP_TIMEOUT_S = 300.0
WARMUP_REQUESTS = 3
LONG_SCRIPT = """
import resource, sys, time
from affectflow.config import load_params
from affectflow.serving.predict import load_backend, predict_paths
path, model, window, hop, bs, warm, threads = sys.argv[1:8]
params = load_params(None, {"predict.max_window_s": float(window), "predict.hop_s": float(hop),
                            "predict.batch_size": int(bs), "predict.device": "cpu",
                            "predict.threads": int(threads)})
backend = load_backend(params, model)
predict_paths(params, [warm], backend=backend)  # model, featurizer and allocator at steady state
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
res = predict_paths(params, [path], backend=backend)
wall = time.perf_counter() - t
p = res.predictions[0]
assert p.error is None, p.error
print(wall, p.windows, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def cpu_now() -> float:
    return time.process_time()


def make_model(path: Path, params: Any) -> Path:
    import torch

    from affectflow.contracts.model_folder import ModelMeta
    from affectflow.contracts.model_folder import write_model_folder as save_model_dir
    from affectflow.corpora.demo import utterance
    from affectflow.features.logmel import LogMel
    from affectflow.models import arch_config, build_model
    from affectflow.models.data import compute_stats

    sr = params.audio.sample_rate
    classes = params.ingest.classes
    waves = [utterance(c, speaker=s, seed=s, sr=sr, duration=2.0) for c in ("neutral", "happy", "sad", "angry")
             for s in range(3)]
    mels = LogMel(params.features.logmel, sr).batch(waves)
    train = params.train.model_copy(update={"model": "cnn_bigru"})
    cfg = arch_config(train)
    torch.manual_seed(0)
    model = build_model("cnn_bigru", cfg, params.features.logmel.n_mels, len(classes)).eval()
    meta = {"arch": "cnn_bigru", "classes": classes, "feature": "logmel",
            "feature_config": params.features.logmel.model_dump(mode="json"),
            "audio": params.audio.model_dump(mode="json"), "normalization": compute_stats(mels, "global").as_dict(),
            "arch_config": cfg, "input_dim": params.features.logmel.n_mels}
    return save_model_dir(path, model, ModelMeta(**meta))


def clips(data_root: Path, n: int, tmp: Path, sr: int) -> tuple[list[str], str]:
    """Every k-th RAVDESS clip (about n), else n generated 3 s clips."""
    from affectflow.corpora import audio_files

    rav = data_root / "ravdess"
    if rav.is_dir():
        files = audio_files(rav)
        step = max(1, len(files) // n) if n else 1
        return [str(f) for f in files[::step][:n or None]], f"RAVDESS ({rav})"
    import soundfile as sf

    from affectflow.corpora.demo import utterance

    out = []
    for i in range(n):
        f = tmp / "clips" / f"c{i:04d}.wav"
        f.parent.mkdir(parents=True, exist_ok=True)
        sf.write(f, utterance(("neutral", "happy", "sad", "angry")[i % 4], speaker=i, seed=i, sr=sr, duration=3.0), sr)
        out.append(str(f))
    return out, "generated (no ../shared/data)"


def register(model_dir: Path, tmp: Path) -> str:
    import mlflow
    from mlflow import MlflowClient

    from affectflow.serving.pyfunc import log_pyfunc

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench", artifact_location=(tmp / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_pyfunc(model_dir, name="model")
    version = mlflow.register_model(info.model_uri, MODEL_NAME).version
    MlflowClient(uri, uri).set_registered_model_alias(MODEL_NAME, "champion", version)
    return uri


def batch_rows(params: Any, files: list[str], uri: str, batch_sizes: list[int], seconds: float) -> list[list[str]]:
    from affectflow.serving.predict import load_backend, predict_paths

    rows = []
    t = time.perf_counter()
    backend = load_backend(params, f"models:/{MODEL_NAME}@champion")
    load_s = time.perf_counter() - t
    print(f"model load from the registry: {load_s:.1f} s", file=sys.stderr)
    predict_paths(params, files[:8], backend=backend, report=lambda m: None)  # warm-up
    for bs in batch_sizes:
        p = params.model_copy(update={"predict": params.predict.model_copy(update={"batch_size": bs})})
        backend.batch_size = bs
        c, t = cpu_now(), time.perf_counter()
        res = predict_paths(p, files, backend=backend, report=lambda m: None)
        wall, cpu = time.perf_counter() - t, cpu_now() - c
        assert not res.failed, res.failed[:3]
        rows.append([f"batch {bs}", str(len(files)), f"{len(files) / wall:.1f}", f"{seconds / wall:.0f}",
                     f"{len(files) / cpu:.1f}", f"{wall:.1f}"])
    return rows


def serve_latency(uri: str, files: list[str], n: int, sr: int, tmp: Path, threads: int) -> dict[str, Any]:
    import json

    import numpy as np

    from affectflow import audio
    from affectflow.runtime.netutil import free_port, stop_group, wait_ready
    from affectflow.serving.predict import invocations_payload, post_invocations

    bin_dir = Path(sys.executable).parent
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    if threads:  # torch in the server reads these at start-up
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = (tmp / "serve.log").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    try:
        wait_ready(f"{url}/ping", proc, tmp / "serve.log", "mlflow models serve", STARTUP_TIMEOUT_S, poll_s=0.25)
        startup = time.perf_counter() - t0
        kinds = {"waveform": [invocations_payload([audio.load(f, sr)], sr) for f in files[:n]],
                 "b64": [invocations_payload(files=[f]) for f in files[:n]]}
        out: dict[str, Any] = {"startup_s": startup}
        for kind, bodies in kinds.items():
            for b in bodies[:WARMUP_REQUESTS]:
                post_invocations(url, b)
            lat = []
            for b in bodies:
                t = time.perf_counter()
                post_invocations(url, b)
                lat.append(time.perf_counter() - t)
            ms = np.array(lat) * 1000
            out[kind] = {"n": len(lat), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                         "mean": float(ms.mean()), "payload_kb": float(np.mean([len(json.dumps(b)) for b in bodies]) / 1024)}
        return out
    finally:
        stop_group(proc)
        log.close()


def inprocess_latency(params: Any, files: list[str], n: int) -> dict[str, float]:
    """The same single-clip requests without HTTP/JSON: what the server adds."""
    import numpy as np

    from affectflow.serving.predict import load_backend, predict_paths

    backend = load_backend(params, f"models:/{MODEL_NAME}@champion")
    lat = []
    for f in files[:n]:
        t = time.perf_counter()
        predict_paths(params, [f], backend=backend, report=lambda m: None)
        lat.append(time.perf_counter() - t)
    ms = np.array(lat) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "mean": float(ms.mean())}


def long_rows(model_dir: Path, tmp: Path, lengths: list[tuple[float, float]], hop: float, bs: int,
              sr: int, warm_s: float, threads: int) -> list[list[str]]:
    """(minutes, window s) per row; each row runs in a fresh process after a warm-up on a clip of
    `warm_s` (predict.max_window_s), so "RSS growth" is what scoring the long file added on top."""
    import numpy as np
    import soundfile as sf

    from affectflow.corpora.demo import utterance

    piece = np.concatenate([utterance(e, speaker=i, seed=i, sr=sr, duration=3.0)
                            for i, e in enumerate(("neutral", "happy", "sad", "angry"))])
    rows = []
    for minutes, window in lengths:
        warm = tmp / "warm.wav"
        sf.write(warm, np.resize(piece, int(warm_s * sr)), sr, subtype="PCM_16")
        f = tmp / f"long_{minutes:g}min.wav"
        with sf.SoundFile(f, "w", sr, 1, subtype="PCM_16") as out:
            for _ in range(int(np.ceil(minutes * 60 * sr / len(piece)))):
                out.write(piece)
        r = subprocess.run([sys.executable, "-c", LONG_SCRIPT, str(f), str(model_dir), str(window), str(hop),
                            str(bs), str(warm), str(threads)], capture_output=True, text=True, check=True,
                           env={**os.environ, "AFFECTFLOW_PROGRESS": "0"})
        wall, windows, base, peak = (float(x) for x in r.stdout.split()[-4:])
        rows.append([f"{minutes:g} min", f"{window:g} s", f"{windows:.0f}", f"{wall:.1f}",
                     f"{minutes * 60 / wall:.0f}", f"{base:.0f}", f"{peak - base:.0f}"])
        f.unlink()
    return rows


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--clips", type=int, default=200, help="clips for the batch rows")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--requests", type=int, default=100, help="single-clip requests to the server")
    ap.add_argument("--long-minutes", default="1,10", help="lengths of the generated long files")
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads here, in the server and in the long-file processes (0 = torch's default; "
                         "on a shared CPU 1 is far faster: idle threads spin-wait against the neighbours)")
    a = ap.parse_args()
    os.environ.setdefault("AFFECTFLOW_PROGRESS", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import soundfile as sf
    import torch

    from affectflow.config import load_params

    if a.threads:
        torch.set_num_threads(a.threads)
    params = load_params(None, {"predict.threads": a.threads, "predict.device": "cpu"})
    sr = params.audio.sample_rate
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as d:
        tmp = Path(d)
        files, source = clips(Path(a.data_root), a.clips, tmp, sr)
        seconds = sum(sf.info(f).duration for f in files)
        model_dir = make_model(tmp / "model", params)
        uri = register(model_dir, tmp)
        params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": uri})})
        print(f"# affectflow predict benchmark\n\nmachine: {platform.node()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
              f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at start\nclips: {len(files)} from {source}, "
              f"{seconds / 60:.1f} min of audio; model cnn_bigru (train.cnn {params.train.cnn.channels}, "
              f"gru {params.train.cnn.gru_hidden}), log-mel {params.features.logmel.n_mels} bins; "
              f"decode_workers {params.predict.decode_workers}\n")
        rows = batch_rows(params, files, uri, [int(b) for b in a.batch_sizes.split(",")], seconds)
        print(table(["batch", "clips", "clips/s", "× real time", "clips / CPU s", "wall s"], rows))
        inproc = inprocess_latency(params, files, a.requests)
        served = serve_latency(uri, files, a.requests, sr, tmp, a.threads)
        wave, b64 = served["waveform"], served["b64"]
        print(f"\nsingle-clip latency, {wave['n']} sequential requests of each kind after {WARMUP_REQUESTS} warm-up "
              f"(server start-up {served['startup_s']:.0f} s):\n")
        print(table(["path", "mean body KiB", "p50 ms", "p95 ms", "mean ms"], [
            ["`mlflow models serve` (1 worker), HTTP + JSON waveform (16 kHz, decoded by the client)",
             f"{wave['payload_kb']:.0f}", f"{wave['p50']:.0f}", f"{wave['p95']:.0f}", f"{wave['mean']:.0f}"],
            ["`mlflow models serve` (1 worker), HTTP + `audio_b64` file (decoded by the server)",
             f"{b64['payload_kb']:.0f}", f"{b64['p50']:.0f}", f"{b64['p95']:.0f}", f"{b64['mean']:.0f}"],
            ["in process (`predict_paths`, one file)", "", f"{inproc['p50']:.0f}", f"{inproc['p95']:.0f}",
             f"{inproc['mean']:.0f}"]]))
        if not a.skip_long:
            w, h, bs = params.predict.max_window_s, params.predict.hop_s, params.predict.batch_size
            minutes = [float(m) for m in a.long_minutes.split(",")]
            lengths = [(m, w) for m in minutes] + [(minutes[-1], minutes[-1] * 600)]  # last: the whole file in one window
            rows = long_rows(model_dir, tmp, lengths, h, bs, sr, w, a.threads)
            print(f"\nlong files ({h:g} s hop, batch {bs}), one fresh process each; the last row scores the "
                  "file as one window (what windowing avoids):\n")
            print(table(["length", "window", "windows", "wall s", "× real time", "RSS after warm-up MiB",
                         "RSS growth MiB"], rows))
        print(f"\nload average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
