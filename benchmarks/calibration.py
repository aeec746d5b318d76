"""Calibrated confidence in the leave-one-corpus-out protocol: expected calibration error of the
plain softmax and of the temperature-scaled probabilities on each held-out corpus.

For each corpus of `studies.generalization.corpora` in turn: the eGeMAPS recognizer
(`train.model: egemaps_mlp`, 15 epochs: a row of the generalization table) is trained on the other
corpora (the train stage fits the temperature on their validation speakers, `--val-fraction` of
each corpus's speakers; params.yaml ships val_fraction 0, which leaves a model uncalibrated), and the evaluate stage
scores every clip of the held-out corpus, which no choice saw. Also reported: the same on the
training corpora's own test speakers. Ingest and features are cached in --out.

    .venv/bin/python benchmarks/calibration.py --out /tmp/affectflow-calibration
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import table  # benchmarks/predict.py


def main() -> None:
    from affectflow.config import load_params, with_overrides
    from affectflow.contracts.manifest import read_manifest
    from affectflow.contracts.model_folder import read_model_meta
    from affectflow.stages.evaluate import evaluate
    from affectflow.studies.generalization import prepare, study_params, trained_recognizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2, help="splits.val_fraction: the speakers T is fitted on")
    ap.add_argument("--corpora", help="comma-separated subset of studies.generalization.corpora (default: all)")
    a = ap.parse_args()
    out = a.out.resolve()
    loaded = load_params(a.params)
    if a.corpora:
        keep = a.corpora.split(",")
        g = loaded.studies.generalization
        loaded = with_overrides(loaded, {"studies.generalization.corpora": [
            c.model_dump(mode="json") for c in g.corpora if c.name in keep]})
    base = study_params(loaded, out)
    # splits.val_fraction: params.yaml trains without validation speakers (then no temperature is
    # fitted); here a fifth of each training corpus's speakers are held out for it (checkpoint: last).
    params = with_overrides(base, {"features.kinds": ["egemaps"], "train.model": "egemaps_mlp", "train.epochs": 15,
                                   "train.seed": a.seed, "splits.source_test": True, "evaluate.bootstrap": 200,
                                   "splits.val_fraction": a.val_fraction})
    manifest, features = prepare(params, out)
    df = read_manifest(manifest)
    names = [c.name for c in params.studies.generalization.corpora]
    rows = []
    for held in names:
        cell = out / f"held_{held}_seed{a.seed}"
        train_corpora = [n for n in names if n != held]
        path, model_dir = trained_recognizer(params, df, features, train_corpora, held, cell)
        m = evaluate(params, model_dir, path, features, cell / "evaluate").to_json()
        cal = read_model_meta(model_dir).calibration
        x = m["cross_corpus"][held]["calibration"]
        t = m["test"]["calibration"]
        rows.append({"held_out": held, "temperature": cal.temperature if cal else None,
                     "fitted_on_n": cal.n if cal else 0, "uar": m["cross_corpus"][held]["uar"], **x,
                     "source_test_ece_before": t["ece_before"], "source_test_ece_after": t["ece_after"]})
        print(json.dumps(rows[-1]), flush=True)
    pd.DataFrame(rows).to_csv(out / f"calibration_seed{a.seed}.csv", index=False)
    print(f"\nmachine: {platform.node()} ({os.cpu_count()} cores); seed {a.seed}")
    print(table(["held-out corpus", "T", "UAR", "accuracy", "mean conf. softmax", "ECE softmax",
                 "mean conf. calibrated", "ECE calibrated", "source test ECE softmax -> calibrated"],
                [[r["held_out"], f"{r['temperature']:.2f}", f"{r['uar']:.3f}", f"{r['accuracy']:.3f}",
                  f"{r['mean_confidence_before']:.3f}", f"{r['ece_before']:.3f}", f"{r['mean_confidence_after']:.3f}",
                  f"{r['ece_after']:.3f}", f"{r['source_test_ece_before']:.3f} -> {r['source_test_ece_after']:.3f}"]
                 for r in rows]))


if __name__ == "__main__":
    main()
