"""Timeline speed and memory: `affectflow predict --timeline` (`affectflow.serving.timeline`) on
generated recordings of 1, 10 and 60 minutes, each in a fresh process.

The model is benchmarks/predict.py's: a `cnn_bigru` folder with params.yaml's architecture and
log-mel, seeded untrained weights (speed does not depend on the weights). Each row: windows scored,
wall time, real-time factor (audio seconds per wall second), RSS after a warm-up timeline of a
short file, and what scoring the long file added on top ("RSS growth": flat in the length when the
file is streamed).

    .venv/bin/python benchmarks/timeline.py                      # 1, 10, 60 min
    .venv/bin/python benchmarks/timeline.py --minutes 1,5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import make_model, table  # benchmarks/predict.py

SCRIPT = """
import resource, sys, time
from affectflow.config import load_params
from affectflow.serving.predict import load_backend
from affectflow.serving.timeline_files import timeline_paths
path, model, warm, threads, bs = sys.argv[1:6]
params = load_params(None, {"predict.device": "cpu", "predict.threads": int(threads), "predict.batch_size": int(bs)})
backend = load_backend(params, model)
timeline_paths(params, [warm], backend=backend)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
res = timeline_paths(params, [path], backend=backend)
wall = time.perf_counter() - t
(tl,) = res.timelines
print(wall, len(tl.starts), tl.duration_s, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    import numpy as np
    import soundfile as sf

    from affectflow.config import load_params
    from affectflow.corpora.demo import utterance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", default="1,10,60")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    params = load_params(None)
    sr = params.audio.sample_rate
    tl = params.predict.timeline
    with tempfile.TemporaryDirectory(prefix="affectflow-timeline-bench-") as d:
        tmp = Path(d)
        model = make_model(tmp / "model", params)
        piece = np.concatenate([utterance(e, speaker=i, seed=i, sr=sr, duration=3.0)
                                for i, e in enumerate(("neutral", "happy", "sad", "angry"))])
        warm = tmp / "warm.wav"
        sf.write(warm, np.resize(piece, 20 * sr), sr, subtype="PCM_16")
        rows = []
        for minutes in (float(m) for m in a.minutes.split(",")):
            f = tmp / f"long_{minutes:g}min.wav"
            with sf.SoundFile(f, "w", sr, 1, subtype="PCM_16") as out:
                for _ in range(int(np.ceil(minutes * 60 * sr / len(piece)))):
                    out.write(piece)
            r = subprocess.run([sys.executable, "-c", SCRIPT, str(f), str(model), str(warm), str(a.threads),
                                str(a.batch_size)], capture_output=True, text=True, check=True,
                               env={**os.environ, "AFFECTFLOW_PROGRESS": "0"})
            wall, n, dur, base, peak = (float(x) for x in r.stdout.split()[-5:])
            rows.append([f"{minutes:g} min", f"{n:.0f}", f"{wall:.1f}", f"{n / wall:.1f}", f"{dur / wall:.0f}x",
                         f"{base:.0f}", f"{peak - base:.0f}"])
            f.unlink()
            print(rows[-1], flush=True)
    print(f"\nmachine: {platform.node()} ({os.cpu_count()} cores), torch threads {a.threads or 'default'}; "
          f"window {tl.window_s:g} s, hop {tl.hop_s:g} s, smooth {tl.smooth}, batch {a.batch_size}")
    print(table(["recording", "windows", "wall s", "windows/s", "real-time factor", "RSS after warm-up MiB",
                 "RSS growth MiB"], rows))


if __name__ == "__main__":
    main()
