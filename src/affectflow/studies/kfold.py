"""Speaker-independent k-fold study: every speaker fold is the test set once.

`affectflow train --folds`: for each fold k the manifest's splits are re-carved (fold k = test,
validation speakers drawn from the rest), the train and evaluate stages run through the stage
runner as they would on their own (no encoder or synthetic set from the workdir), and the study reports mean ± std over folds and the metrics of all folds' predictions pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.model_folder import read_model_meta
from affectflow.contracts.splits import assign_splits, check_no_leakage
from affectflow.contracts.workdir import MANIFEST_FILE, MODEL_SUBDIR
from affectflow.stages.evaluate import plot_confusion, score_predictions
from affectflow.stages.runner import run_stage
from affectflow.stages.train.stage import TrainingError
from affectflow.storage import atomic_write_json, atomic_write_text
from affectflow.tracking import runs as tracking
from affectflow.tracking.lineage import lineage as lineage_tags

FOLD_METRICS = ("uar", "wa", "macro_f1")


def train_folds(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Speaker-independent k-fold: each fold of speakers is the test set once (validation speakers
    re-carved from the rest with `assign_splits`); reports mean ± std (sample, ddof=1) over folds
    and the metrics of all folds' predictions pooled. Writes `<out>/fold_<k>/{train,evaluate}/`,
    `<out>/summary.json`, `<out>/report.md`, `<out>/confusion.png`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = read_manifest(manifest)
    n_folds = int(df["fold"].max()) + 1
    if n_folds < 2:
        raise TrainingError(f"{manifest}: field 'fold' has {n_folds} value(s); k-fold needs splits.n_folds >= 2")
    rows: list[dict[str, Any]] = []
    preds: list[pd.DataFrame] = []
    lineage = lineage_tags(params, df, manifest, features_dir)
    fold_params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"log_model": False})})
    with tracking.start_run(params, f"kfold-{params.train.model}", tags={"stage": "train_folds", **lineage}):
        import mlflow

        for k in range(n_folds):
            fdf = df.copy()
            fdf["split"] = assign_splits(fdf, k, params.splits.val_fraction, params.splits.seed)
            check_no_leakage(fdf)
            fold_dir = out / f"fold_{k}"
            fold_manifest = fold_dir / MANIFEST_FILE
            fold_manifest.parent.mkdir(parents=True, exist_ok=True)
            write_manifest(fdf, fold_manifest)
            data = {"manifest": fold_manifest, "features": Path(features_dir)}
            tr = run_stage(fold_params, "train", data, fold_dir / "train", respect_switch=False,
                           optional_defaults=False)
            mlflow.MlflowClient().set_tag(tr.summary["mlflow_run_id"], "fold", str(k))
            m = run_stage(fold_params, "evaluate", {**data, "model": tr.model_dir}, fold_dir / "evaluate").evaluation
            t = m.test
            rows.append({"fold": k, **{n: getattr(t, n) for n in FOLD_METRICS},
                         **{f"{n}_ci": [getattr(t, f"{n}_ci_low"), getattr(t, f"{n}_ci_high")] for n in FOLD_METRICS},
                         "val_uar": tr.summary["val_uar"], "best_epoch": tr.summary["best_epoch"],
                         "test_speakers": sorted(set(fdf.loc[fdf["split"] == "test", "speaker"])),
                         "n_test": t.n})
            mlflow.log_metrics({f"fold_{n}": getattr(t, n) for n in FOLD_METRICS}, step=k)
            preds.append(pd.read_parquet(fold_dir / "evaluate" / "predictions.parquet").query("set == 'test'"))
        table = pd.DataFrame(rows)
        classes = read_model_meta(out / "fold_0" / "train" / MODEL_SUBDIR).classes
        pooled_pred = pd.concat(preds, ignore_index=True)
        pooled = score_predictions(pooled_pred, classes, params)
        summary = {
            "folds": rows, "n_folds": n_folds, "model": params.train.model,
            "mean": {n: round(float(table[n].mean()), 4) for n in FOLD_METRICS},
            "std": {n: round(float(table[n].std(ddof=1)), 4) for n in FOLD_METRICS},
            "min": {n: round(float(table[n].min()), 4) for n in FOLD_METRICS},
            "max": {n: round(float(table[n].max()), 4) for n in FOLD_METRICS},
            "pooled": {n: pooled[n] for n in ("uar", "uar_ci_low", "uar_ci_high", "wa", "macro_f1", "n")},
            "pooled_per_class_recall": pooled["per_class_recall"],
        }
        plot_confusion(np.asarray(pooled["confusion"]), classes,
                       f"{n_folds}-fold pooled UAR {pooled['uar']:.3f}", out / "confusion.png")
        atomic_write_json(out / "summary.json", summary)
        atomic_write_text(out / "report.md", _folds_report(summary))
        mlflow.log_metrics({f"mean_{n}": summary["mean"][n] for n in FOLD_METRICS}
                           | {f"std_{n}": summary["std"][n] for n in FOLD_METRICS}
                           | {"pooled_uar": pooled["uar"]})
        mlflow.log_artifact(str(out / "summary.json"))
        mlflow.log_artifact(str(out / "report.md"))
        mlflow.log_artifact(str(out / "confusion.png"), artifact_path="plots")
    return summary


def _folds_report(s: dict[str, Any]) -> str:
    lines = [f"# {s['n_folds']}-fold speaker-independent evaluation ({s['model']})", "",
             "| fold | test speakers | UAR | WA | macro-F1 | val UAR | best epoch |", "|---|---|---|---|---|---|---|"]
    for r in s["folds"]:
        spk = ", ".join(x.split("/", 1)[-1] for x in r["test_speakers"])
        lines.append(f"| {r['fold']} | {spk} | {r['uar']:.3f} | {r['wa']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['val_uar']:.3f} | {r['best_epoch']} |")
    m, d = s["mean"], s["std"]
    lines += [f"| **mean ± std** | | **{m['uar']:.3f} ± {d['uar']:.3f}** | {m['wa']:.3f} ± {d['wa']:.3f} | "
              f"{m['macro_f1']:.3f} ± {d['macro_f1']:.3f} | | |", "",
              f"Pooled over folds: UAR {s['pooled']['uar']:.3f} [{s['pooled']['uar_ci_low']:.3f}, "
              f"{s['pooled']['uar_ci_high']:.3f}], WA {s['pooled']['wa']:.3f}, n = {s['pooled']['n']}.", "",
              "![pooled confusion](confusion.png)", ""]
    return "\n".join(lines)
