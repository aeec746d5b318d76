"""Stage function `augment(params, manifest, features_dir, out_dir) -> AugmentResult`.

Steps: real training samples -> standardise -> train the generator (training split only) ->
`samples_per_class` samples per class -> score (realness, agreement, k-NN manifold, novelty) ->
filter -> synthetic.npz + report.{json,md} + PNGs (written as one folder, atomically) -> MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from affectflow.config import AugmentConfig, Params
from affectflow.contracts.manifest import manifest_hash, read_manifest
from affectflow.stages.augment.data import (
    Embedding,
    RealSet,
    Standardizer,
    calibration_split,
    load_real_set,
    training_rows,
)
from affectflow.stages.augment.generate import (
    Generated,
    TrainedGenerator,
    generate,
    resolve_device,
    train_generator,
)
from affectflow.stages.augment.quality import (
    AgreementModel,
    Scores,
    Thresholds,
    manifold_scores,
    real_nn_distances,
    select,
    thresholds_from_real,
)
from affectflow.stages.augment.report import (
    compare,
    log_to_mlflow,
    per_class_table,
    plot_losses,
    plot_projection,
    plot_scores,
    write_report,
)
from affectflow.storage import atomic_dir, atomic_path

SYNTHETIC = "synthetic.npz"
SCORING_BLAS_THREADS = 1
"""Scoring fits small models (PCA, logistic regression, k-NN on ~10^3 rows): one BLAS thread is as
fast as many and does not spin against other processes on a shared CPU."""
ROW_KEYS = ("X", "y", "realness", "agreement", "nn_distance", "knn_inside", "kept")
"""Fields with one entry per synthetic sample."""
REQUIRED_KEYS = (*ROW_KEYS, "classes", "feature")


class SyntheticFormatError(ValueError):
    """synthetic.npz is missing a field or has inconsistent lengths; the message names both."""


@dataclass
class AugmentResult:
    out_dir: Path
    synthetic: Path
    report_json: Path
    report_md: Path
    summary: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None


def augment(
    params: Params, manifest: str | Path | pd.DataFrame, features_dir: str | Path, out_dir: str | Path,
    track: bool = True,
) -> AugmentResult:
    """Train, generate, score, filter and report; `track=False` skips MLflow (used by the ablation)."""
    cfg = params.augment
    out_dir = Path(out_dir)
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    real = load_real_set(params, df, features_dir)
    classes = real.classes
    std = Standardizer.fit(real.X)
    X_std = std.transform(real.X)
    device = resolve_device(cfg.use_gpu)
    held = calibration_split(real.utt_ids, real.y, cfg.realness_holdout, cfg.seed)
    fit = ~held
    t0 = time.perf_counter()
    model = train_generator(cfg, X_std[fit], real.y[fit], len(classes), device)
    train_s = time.perf_counter() - t0
    gen = generate(model, np.unique(real.y[fit]), cfg.samples_per_class, seed=cfg.seed + 1)
    X_syn = std.inverse(gen.X_std)

    # Scores in the fixed embedding space, all fitted on real training data only.
    with threadpool_limits(SCORING_BLAS_THREADS):
        scores, th, cal_realness, real_emb, syn_emb = _score(cfg, model, real, X_std, X_syn, gen, held, fit)
    kept, passed = select(scores, gen.y, th, cfg.filters, cfg.keep_fraction)

    report = _report(params, df, features_dir, real, gen.y, kept, passed, th.to_json(classes), model.history,
                     train_s, str(device), real_emb, syn_emb)
    report["n_real_generator"] = int(fit.sum())
    report["n_real_calibration"] = int(held.sum())
    with atomic_dir(out_dir) as tmp:
        write_synthetic(tmp / SYNTHETIC, X_syn, gen.y, classes, real.kind, scores, kept, cfg.generator)
        real_2d, syn_2d = _project(real_emb, syn_emb)
        plot_projection(tmp / "projection.png", classes, real_2d, real.y, syn_2d, gen.y, kept, cfg.seed)
        plot_scores(tmp / "scores.png", cal_realness, scores.realness, scores.agreement, scores.nn_distance,
                    real_nn_distances(real_emb), th.label_tau, th.delta)
        plot_losses(tmp / "losses.png", model.history.losses, f"{cfg.generator} training losses")
        write_report(tmp, report)
    run_id = None
    if track:
        from affectflow.tracking.runs import lineage

        tags = lineage(params, df, manifest, features_dir) if not isinstance(manifest, pd.DataFrame) else {}
        run_id = log_to_mlflow(params, out_dir, report, tags)
    summary = {"generated": report["totals"]["generated"], "kept": report["totals"]["kept"],
               "frechet_before": report["metrics"]["before"]["frechet"],
               "frechet_after": report["metrics"]["after"]["frechet"],
               "precision_after": report["metrics"]["after"]["precision"],
               "epoch_seconds": report["training"]["epoch_seconds_mean"], "device": str(device)}
    return AugmentResult(out_dir, out_dir / SYNTHETIC, out_dir / "report.json", out_dir / "report.md",
                         summary, run_id)


def _score(
    cfg: AugmentConfig, model: TrainedGenerator, real: RealSet, X_std: np.ndarray, X_syn: np.ndarray,
    gen: Generated, held: np.ndarray, fit: np.ndarray,
) -> tuple[Scores, Thresholds, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, thresholds, calibration reals' realness, real embedding, synthetic embedding)."""
    emb = Embedding(cfg.embedding_pca, cfg.seed).fit(real.X)
    real_emb, syn_emb = emb.transform(real.X), emb.transform(X_syn)
    agree = AgreementModel(cfg.agreement_hidden, cfg.agreement_alpha, cfg.agreement_max_iter, cfg.seed)
    agree.fit(emb.features(real.X), real.y)
    # Realness reference: held-out real clips (all training reals when nothing is held out).
    cal = held if held.any() else fit
    cal_realness = model.realness(X_std[cal], real.y[cal])
    scores = Scores(
        realness=model.realness(gen.X_std, gen.y),
        agreement=agree.prob_of(emb.features(X_syn), gen.y),
        **dict(zip(("nn_distance", "knn_inside"),
                   manifold_scores(syn_emb, gen.y, real_emb, real.y, cfg.knn_k), strict=True)),
    )
    th = thresholds_from_real(cal_realness, real.y[cal], real_emb, cfg)

    return scores, th, cal_realness, real_emb, syn_emb


def _project(real_emb: np.ndarray, syn_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components of the real embedding, applied to both sets (real_2d, syn_2d)."""
    mu = real_emb.mean(0)
    _, _, vt = np.linalg.svd(real_emb - mu, full_matrices=False)
    basis = vt[:2].T if vt.shape[0] >= 2 else np.eye(real_emb.shape[1], 2)
    return (real_emb - mu) @ basis, (syn_emb - mu) @ basis


def _report(
    params: Params, df: pd.DataFrame, features_dir: str | Path, real: RealSet, syn_y: np.ndarray,
    kept: np.ndarray, passed: dict[str, np.ndarray], thresholds: dict[str, Any], history: Any,
    train_s: float, device: str, real_emb: np.ndarray, syn_emb: np.ndarray,
) -> dict[str, Any]:
    cfg = params.augment
    per_class = per_class_table(real.classes, real.y, syn_y, kept, passed)
    per_class = {k: v for k, v in per_class.items() if v["real"] or v["generated"]}
    totals = {"real": len(real.y), "generated": len(syn_y), "kept": int(kept.sum()),
              "passed": {k: int(m.sum()) for k, m in passed.items()}}
    secs = history.epoch_seconds
    emb_desc = ("standardised features" if real.kind == "egemaps" else "per-band mean+std of the segment, standardised")
    if cfg.embedding_pca:
        emb_desc += f" -> PCA({min(cfg.embedding_pca, real_emb.shape[1])}) fitted on real training data"
    metrics: dict[str, Any] = {"embedding": emb_desc, "k": cfg.knn_k,
                               **compare(real_emb, syn_emb, kept, cfg.knn_k, cfg.seed)}
    return {
        "generator": cfg.generator, "feature": real.kind, "device": device, "classes": real.classes,
        "n_real": len(real.y), "n_real_clips": len(np.unique(real.utt_ids)),
        "sample_shape": list(real.sample_shape), "filters": list(cfg.filters), "keep_fraction": cfg.keep_fraction,
        "per_class": per_class, "totals": totals, "thresholds": thresholds, "metrics": metrics,
        "training": {"epochs": len(secs), "seconds": train_s,
                     "epoch_seconds_mean": float(np.mean(secs)) if secs else 0.0,
                     "epoch_seconds_median": float(np.median(secs)) if secs else 0.0,
                     "final_losses": history.losses[-1] if history.losses else {}},
        "plots": ["projection.png", "scores.png", "losses.png"],
        "lineage": {"training_rows_hash": manifest_hash(training_rows(df, real.classes)),
                    "features_dir": str(features_dir), "augment_params_hash": params.section_hash("augment"),
                    "features_params_hash": params.section_hash("features")},
    }


# ----------------------------------------------------------------------------- synthetic.npz
def write_synthetic(
    path: Path, X: np.ndarray, y: np.ndarray, classes: list[str], feature: str, scores: Scores,
    kept: np.ndarray, generator: str,
) -> None:
    """The artifact the recognizer reads (format in docs/ARCHITECTURE.md; no pickled objects)."""
    with atomic_path(path) as tmp:
        np.savez(tmp, X=X.astype(np.float32), y=y.astype(np.int64), classes=np.asarray(classes, dtype=str),
                 feature=np.asarray(feature), generator=np.asarray(generator),
                 realness=scores.realness.astype(np.float32), agreement=scores.agreement.astype(np.float32),
                 nn_distance=scores.nn_distance.astype(np.float32), knn_inside=scores.knn_inside.astype(bool),
                 kept=kept.astype(bool))


@dataclass
class SyntheticSet:
    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    feature: str
    arrays: dict[str, np.ndarray]
    """Every field of the file, for the rows returned (scores included)."""


def load_synthetic(path: str | Path, kept_only: bool = True) -> SyntheticSet:
    """Read synthetic.npz (or an augment folder holding one), checking every required field."""
    p = Path(path)
    if p.is_dir():
        p = p / SYNTHETIC
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no synthetic set (run `affectflow augment` first)")
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise SyntheticFormatError(f"{p}: missing field(s) {missing}")
    n = len(arrays["X"])
    for k in ROW_KEYS:
        if len(arrays[k]) != n:
            raise SyntheticFormatError(f"{p}: field '{k}' has {len(arrays[k])} rows, X has {n}")
    rows = arrays["kept"].astype(bool) if kept_only else np.ones(n, dtype=bool)
    per_row = {k: (v[rows] if k in ROW_KEYS else v) for k, v in arrays.items()}
    return SyntheticSet(per_row["X"], per_row["y"], [str(c) for c in arrays["classes"]],
                        str(arrays["feature"]), per_row)
