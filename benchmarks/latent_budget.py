"""Why a `whisper_latent` cell of `affectflow ablate generalization` took about an hour, and how
many WGAN-GP epochs the Whisper embeddings need, decided on the training corpora only (issue 27).

One cell's recipe (the study's `whisper_latent` row: the probe's `ssl_linear` on the middle layer,
then `augment.latent` with the style-conditioned generator) on the training corpora of one held-out
corpus, which plays no part (its clips are not even embedded):

1. threads: the latent stage for `--probe-epochs` generator epochs at torch's default intra-op
   threads and at 1 (wall and CPU seconds per epoch; the study's other rows already run at
   `train.threads`);
2. budget: the stage at each `--epochs`, 1 thread, and the generator's fidelity to the REAL
   TRAINING embeddings that the stage reports (Fréchet distance, k-NN precision / recall in the
   PCA space the filters use) and its Wasserstein estimate. The chosen budget is the smallest
   whose Fréchet distance is within `--tolerance` of the longest run's: a criterion that reads no
   held-out clip and no label of one.

    nice -n 10 .venv/bin/python benchmarks/latent_budget.py --study /tmp/wstudy/base --held emodb \
        --epochs 30 100 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from affectflow.config import Params

CORPORA = ("ravdess", "emodb", "tess", "emovo")


def latent_params(a: argparse.Namespace, out: Path) -> Params:
    from affectflow.config import load_params, with_overrides
    from affectflow.studies.generalization import study_params

    p = load_params(a.params, ["paths.data_root=/work/shared/data", f"features.ssl.checkpoint={a.checkpoint}",
                               "features.ssl.layers=[]", "features.kinds=[compare]", "train.model=compare_mlp"])
    sp = study_params(p, out, [a.row])
    return with_overrides(sp, {**p.studies.generalization.conditions[a.row].overrides, "augment.seed": 0})


def run_latent(params: Params, model_dir: Path, manifest: Path, features: Path, out: Path, epochs: int,
               threads: int) -> dict[str, Any]:
    import torch

    from affectflow.config import with_overrides
    from affectflow.stages.augment.latent import augment_latent

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    t, c = time.perf_counter(), time.process_time()
    try:
        augment_latent(with_overrides(params, {"augment.epochs": epochs}), model_dir, manifest, features, out)
    finally:
        torch.set_num_threads(before)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    rep = json.loads((out / "report.json").read_text())
    tr, m = rep["training"], rep["metrics"]["before"]
    return {"epochs": epochs, "threads": threads, "stage_wall_s": round(wall, 1), "stage_cpu_s": round(cpu, 1),
            "generator_s": round(tr["seconds"], 1), "s_per_epoch": round(tr["seconds"] / epochs, 2),
            "wasserstein": round(tr["final_losses"]["wasserstein"], 3), "frechet": round(m["frechet"], 2),
            "precision": round(m["precision"], 3), "recall": round(m["recall"], 3),
            "kept": rep["totals"]["kept"], "generated": rep["totals"]["generated"]}


def main() -> None:
    import torch

    from affectflow.contracts.manifest import read_manifest
    from affectflow.studies.generalization import trained_recognizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, required=True, help="a study folder with ingest/ and features/")
    ap.add_argument("--held", default="emodb", choices=CORPORA)
    ap.add_argument("--row", default="whisper_latent")
    ap.add_argument("--checkpoint", default="pkg:whisper-base")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--epochs", type=int, nargs="+", default=[30, 100, 300])
    ap.add_argument("--probe-epochs", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/latent_budget"))
    a = ap.parse_args()
    out = a.out / a.held
    params = latent_params(a, out)
    df = read_manifest(a.study / "ingest" / "manifest.parquet")
    features = a.study / "features"
    train = [c for c in CORPORA if c != a.held]
    manifest, model_dir = trained_recognizer(params, df, features, train, a.held, out / "cell")
    default = torch.get_num_threads()
    rows = [run_latent(params, model_dir, manifest, features, out / f"t{t}", a.probe_epochs, t)
            for t in sorted({default, 1}, reverse=True)]
    rows += [run_latent(params, model_dir, manifest, features, out / f"e{e}", e, 1) for e in a.epochs]
    ref = rows[-1]["frechet"]
    chosen = min((r for r in rows[len(rows) - len(a.epochs):] if r["frechet"] <= ref * (1 + a.tolerance)),
                 key=lambda r: r["epochs"])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    cols = list(rows[0])
    print(f"held out: {a.held} (not read); training corpora: {', '.join(train)}; load at the end: {load}")
    print("| " + " | ".join(cols) + " |\n|" + "--:|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"budget: {chosen['epochs']} epochs (the fewest with a Fréchet distance within {a.tolerance:.0%} of "
          f"{rows[-1]['epochs']} epochs')")
    (out / "budget.json").write_text(json.dumps({"rows": rows, "chosen": chosen["epochs"], "load": load}, indent=1))


if __name__ == "__main__":
    main()
