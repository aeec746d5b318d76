"""Stage — evaluate: a trained model on unseen speakers (and corpora), with confidence intervals.

Test rows are the manifest's `test` split of the corpora the model was trained on — speakers the
model never saw, neither in training nor in checkpoint selection. Reported: UAR (primary), WA and
macro-F1 with percentile-bootstrap intervals (`evaluate.bootstrap` resamples of utterances at
`evaluate.ci`), per-class recall, a confusion-matrix PNG, and per-speaker / per-gender breakdowns.
Cross-corpus (`evaluate.cross_corpus`): every clip of another corpus (only its test split when
it is a DANN target, since pretraining saw the rest unlabelled), scored over the classes that
corpus shares with the model (probabilities of the other classes are dropped before the argmax).
Outputs: `metrics.json` (DVC metrics: top-level `uar`, `wa`, `macro_f1`, `per_class_recall`,
`test_manifest_hash`, `model`: the scored model's content hash and MLflow run; details under
`test` and `cross_corpus`), `report.md`, `confusion.png`,
`predictions.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import manifest_hash, read_manifest
from affectflow.contracts.model_folder import content_hash
from affectflow.metrics import bootstrap, confusion, macro_f1_cm, recalls, uar_cm, wa_cm
from affectflow.serving.recognizer import Recognizer, load_model_dir, predict_features
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_path, atomic_write_json, atomic_write_text, save_figure

PRIMARY = "uar"
DIGITS = 4


class EvaluationError(ValueError):
    """Evaluation cannot run; the message names the file and the field."""


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], params: Params) -> dict[str, Any]:
    """UAR / WA / macro-F1 with bootstrap intervals, per-class recall and the confusion matrix."""
    ev = params.evaluate
    est = bootstrap(y_true, y_pred, len(classes), n_resamples=ev.bootstrap, level=ev.ci, seed=ev.seed)
    cm = confusion(y_true, y_pred, len(classes))
    out: dict[str, Any] = {"n": len(y_true)}
    for name, e in est.items():
        out.update({k: round(v, DIGITS) for k, v in e.as_dict(name).items()})
    out["per_class_recall"] = {c: (None if np.isnan(r) else round(float(r), DIGITS))
                               for c, r in zip(classes, recalls(cm), strict=True)}
    out["confusion"] = cm.tolist()
    return out


def breakdown(df: pd.DataFrame, by: str, n_classes: int) -> dict[str, dict[str, Any]]:
    """UAR / WA / macro-F1 per value of `by` (speaker, gender) — who the model fails on."""
    out = {}
    for key, g in df.groupby(by, sort=True):
        cm = confusion(g["y_true"], g["y_pred"], n_classes)
        out[str(key) or "unknown"] = {"n": len(g), "uar": round(uar_cm(cm), DIGITS),
                                      "wa": round(wa_cm(cm), DIGITS), "macro_f1": round(macro_f1_cm(cm), DIGITS)}
    return out


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix (recall per cell) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    size = 1.0 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="reference", title=title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall")
    fig.tight_layout()
    return save_figure(fig, path)


def predict_rows(rec: Recognizer, rows: pd.DataFrame, fs: FeatureSet, classes: Sequence[str]) -> pd.DataFrame:
    """Predictions for manifest rows over `classes` (a subset of the model's, in its order)."""
    probs = predict_features(rec, fs.load(rec.feature, rows["utt_id"].tolist()), corpora=rows["corpus"].astype(str).tolist())
    cols = [rec.classes.index(c) for c in classes]
    sub = probs[:, cols]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    y_of = {c: i for i, c in enumerate(classes)}
    out = rows[["utt_id", "corpus", "speaker", "gender", "emotion"]].reset_index(drop=True).copy()
    out["y_true"] = rows["emotion"].map(y_of).to_numpy()
    out["y_pred"] = sub.argmax(axis=1)
    out["predicted"] = [classes[i] for i in out["y_pred"]]
    for i, c in enumerate(classes):
        out[f"p_{c}"] = sub[:, i]
    return out


def score_predictions(pred: pd.DataFrame, classes: Sequence[str], params: Params) -> dict[str, Any]:
    res = score(pred["y_true"].to_numpy(), pred["y_pred"].to_numpy(), classes, params)
    res["classes"] = list(classes)
    res["per_speaker"] = breakdown(pred, "speaker", len(classes))
    res["per_gender"] = breakdown(pred, "gender", len(classes))
    return res


def cross_corpus(rec: Recognizer, df: pd.DataFrame, fs: FeatureSet, names: Sequence[str], params: Params,
                 manifest: str | Path) -> dict[str, tuple[dict[str, Any], pd.DataFrame]]:
    """Scores on other corpora over the classes each shares with the model."""
    trained_on = set(rec.meta.train.corpora)
    out = {}
    for name in names:
        if name in trained_on:
            raise EvaluationError(f"evaluate.cross_corpus: '{name}' is a training corpus of this model "
                                  "(its test split is the main evaluation)")
        rows = df[df["corpus"] == name]
        if rows.empty:
            raise EvaluationError(f"{manifest}: evaluate.cross_corpus names '{name}' but no row has that 'corpus'")
        if (rows["role"] == "target").any():
            rows = rows[rows["split"] == "test"]
        shared = [c for c in rec.classes if c in set(rows["emotion"])]
        if len(shared) < 2:
            raise EvaluationError(f"{manifest}: corpus '{name}' shares {shared} with the model's classes "
                                  f"{rec.classes}; need at least 2")
        rows = rows[rows["emotion"].isin(shared)]
        pred = predict_rows(rec, rows, fs, shared)
        res = score_predictions(pred, shared, params)
        res["rows"] = "test split" if (df.loc[df["corpus"] == name, "role"] == "target").any() else "all"
        res["test_manifest_hash"] = manifest_hash(rows)
        out[name] = (res, pred)
    return out


def _fmt(res: dict[str, Any], name: str) -> str:
    return f"{res[name]:.3f} [{res[f'{name}_ci_low']:.3f}, {res[f'{name}_ci_high']:.3f}]"


def report_md(metrics: dict[str, Any], params: Params) -> str:
    t = metrics["test"]
    level = round(params.evaluate.ci * 100)
    lines = [
        "# Evaluation", "",
        f"Model: `{metrics['model_dir']}` ({metrics['arch']}, {len(t['classes'])} classes); "
        f"test split of {', '.join(metrics['corpora'])}: {t['n']} clips from {len(t['per_speaker'])} unseen speakers.",
        f"Intervals: {level} % percentile bootstrap over utterances ({params.evaluate.bootstrap} resamples).", "",
        "| metric | value [CI] |", "|---|---|",
        f"| **UAR** | **{_fmt(t, 'uar')}** |", f"| WA | {_fmt(t, 'wa')} |", f"| macro-F1 | {_fmt(t, 'macro_f1')} |", "",
        "## Per-class recall", "", "| class | recall |", "|---|---|",
        *(f"| {c} | {'—' if r is None else f'{r:.3f}'} |" for c, r in t["per_class_recall"].items()), "",
        "![confusion](confusion.png)", "",
    ]
    for by in ("per_gender", "per_speaker"):
        lines += [f"## {by.replace('_', ' ').capitalize()}", "", "| group | n | UAR | WA | macro-F1 |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['uar']:.3f} | {v['wa']:.3f} | {v['macro_f1']:.3f} |" for k, v in t[by].items()]
        lines.append("")
    for name, r in metrics.get("cross_corpus", {}).items():
        lines += [f"## Cross-corpus: {name}", "",
                  f"{r['n']} clips ({r['rows']}), shared classes {', '.join(r['classes'])}.", "",
                  f"UAR {_fmt(r, 'uar')} · WA {_fmt(r, 'wa')} · macro-F1 {_fmt(r, 'macro_f1')}", "",
                  f"![confusion {name}](confusion_{name}.png)", ""]
    return "\n".join(lines)


def evaluate(params: Params, model_dir: str | Path, manifest: str | Path, features_dir: str | Path,
             out_dir: str | Path, *, log_to_model_run: bool = True) -> dict[str, Any]:
    """Score `model_dir` on the test split (+ cross-corpus); write metrics.json, report.md, PNGs.

    `log_to_model_run=False` logs into a new MLflow run instead of the model's training run (a
    champion re-scored on another test set must not overwrite its own evaluation)."""
    from affectflow.stages import get as get_stage
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = load_model_dir(model_dir)
    df = read_manifest(manifest)
    fs = FeatureSet(features_dir)
    corpora = list(rec.meta.train.corpora) or sorted(set(df["corpus"]))
    rows = df[(df["split"] == "test") & df["corpus"].isin(corpora) & df["emotion"].isin(rec.classes)]
    if rows.empty:
        raise EvaluationError(f"{manifest}: no test rows (field 'split' == 'test') of corpora {corpora} "
                              f"with classes {rec.classes}")
    overlap = set(rows["speaker"]) & set(rec.meta.train.train_speakers)
    if overlap:
        raise EvaluationError(f"{manifest}: test speakers {sorted(overlap)[:5]} were training speakers of "
                              f"{model_dir}; the manifest's splits differ from the training run's")
    pred = predict_rows(rec, rows, fs, rec.classes)
    test = score_predictions(pred, rec.classes, params)
    test["test_manifest_hash"] = manifest_hash(rows)  # which test set: the registry compares like with like
    plot_confusion(np.asarray(test["confusion"]), rec.classes, f"test UAR {test['uar']:.3f}", out / "confusion.png")
    # Which model was scored: the registry refuses to pair these metrics with any other model.
    identity = {"content_hash": content_hash(model_dir), "mlflow_run_id": (rec.meta.mlflow or {}).get("run_id")}
    metrics: dict[str, Any] = {"model_dir": str(model_dir), "model": identity, "arch": rec.meta.arch, "corpora": corpora,
                               "uar": test["uar"], "wa": test["wa"], "macro_f1": test["macro_f1"],
                               "per_class_recall": test["per_class_recall"],
                               "test_manifest_hash": test["test_manifest_hash"], "test": test}
    preds = [pred.assign(set="test")]
    xc = cross_corpus(rec, df, fs, params.evaluate.cross_corpus, params, manifest)
    if xc:
        metrics["cross_corpus"] = {}
        for name, (res, p) in xc.items():
            metrics["cross_corpus"][name] = res
            plot_confusion(np.asarray(res["confusion"]), res["classes"], f"{name} UAR {res['uar']:.3f}",
                           out / f"confusion_{name}.png")
            preds.append(p.assign(set=f"cross:{name}"))
    with atomic_path(out / "predictions.parquet") as tmp:
        pd.concat(preds, ignore_index=True).to_parquet(tmp, index=False)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", report_md(metrics, params))
    with tracking.reopen_run(rec.meta.mlflow if log_to_model_run else None, params, "evaluate", tags={"stage": "evaluate"},
                             sections=get_stage("evaluate").sections):
        import mlflow

        flat = {f"test_{k}": metrics[k] for k in ("uar", "wa", "macro_f1")}
        flat |= {f"test_{k}_ci_{s}": test[f"{k}_ci_{s}"] for k in ("uar", "wa", "macro_f1") for s in ("low", "high")}
        flat |= {f"test_recall_{c}": r for c, r in test["per_class_recall"].items() if r is not None}
        for name, res in metrics.get("cross_corpus", {}).items():
            flat |= {f"cross_{name}_{k}": res[k] for k in ("uar", "wa", "macro_f1")}
        mlflow.log_metrics(flat)
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    return metrics


@dataclass
class EvaluateResult:
    out_dir: Path
    metrics: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        return {k: self.metrics[k] for k in ("uar", "wa", "macro_f1", "per_class_recall") if k in self.metrics}


def run(params: Params, inputs: Inputs, out_dir: Path) -> EvaluateResult:
    return EvaluateResult(Path(out_dir), evaluate(params, inputs["model"], inputs["manifest"], inputs["features"],
                                                  out_dir))
