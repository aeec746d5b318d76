"""Stage function `augment(params, manifest, features_dir, out_dir) -> AugmentResult`.

Steps: real training samples -> standardise -> train the generator (training split only) ->
`samples_per_class` samples per class -> score (realness, agreement, k-NN manifold, novelty) ->
filter -> synthetic.npz + report.{json,md} + PNGs (written as one folder, atomically) -> MLflow.

With `augment.style: speaker`, style codes per training speaker (`style.StyleSpace`) condition the
generator, samples get codes mixed between speakers, and each sample's style novelty is scored,
stored, reported per class and (filter `style_novelty`) can be required.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from affectflow.config import AugmentConfig, Params
from affectflow.contracts.manifest import manifest_hash, read_manifest
from affectflow.contracts.synthetic import SYNTHETIC_FILE, SyntheticSet, write_synthetic
from affectflow.runtime.device import resolve_device
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
    train_generator,
)
from affectflow.stages.augment.quality import (
    AgreementModel,
    Scores,
    Thresholds,
    manifold_scores,
    real_nn_distances,
    select,
    style_novelty_threshold,
    thresholds_from_real,
)
from affectflow.stages.augment.report import (
    compare,
    log_to_mlflow,
    per_class_table,
    plot_losses,
    plot_projection,
    plot_scores,
    style_table,
    write_report,
)
from affectflow.stages.augment.style import StyleSpace
from affectflow.stages.spec import Inputs, ReportedOutput
from affectflow.storage import atomic_dir

SCORING_BLAS_THREADS = 1
"""Scoring fits small models (PCA, logistic regression, k-NN on ~10^3 rows): one BLAS thread is as
fast as many and does not spin against other processes on a shared CPU."""

@dataclass(kw_only=True)
class AugmentResult(ReportedOutput):
    synthetic: Path


@dataclass
class Synthesis:
    """A generator trained on real samples, its filtered samples, and what the report reads."""

    real: RealSet
    std: Standardizer
    X_std: np.ndarray
    """Standardised real samples."""
    held: np.ndarray
    """Rows held out from the generator to calibrate realness."""
    model: TrainedGenerator
    train_s: float
    gen: Generated
    X_syn: np.ndarray
    """Generated samples in the real samples' units."""
    scores: Scores
    th: Thresholds
    kept: np.ndarray
    passed: dict[str, np.ndarray]
    cal_realness: np.ndarray
    real_emb: np.ndarray
    syn_emb: np.ndarray
    style: StyleSpace | None = None
    real_style: np.ndarray | None = None
    """Real clips' style novelty (out-of-speaker readings): the style_novelty reference."""

    @property
    def fit(self) -> np.ndarray:
        return ~self.held


def synthesize(cfg: AugmentConfig, real: RealSet, device: Any) -> Synthesis:
    """Standardise, train the generator (style-conditioned with `cfg.style`), sample, score every
    sample on the real training data only, filter. Shared by feature-space augmentation (`augment`)
    and latent-feature augmentation (`latent.augment_latent`), whose `real` are embeddings."""
    std = Standardizer.fit(real.X)
    X_std = std.transform(real.X)
    held = calibration_split(real.utt_ids, real.y, cfg.realness_holdout, cfg.seed)
    fit = ~held
    style = _style_space(cfg, real, X_std)
    real_codes = None if style is None else style.codes_for(real.speakers)
    t0 = time.perf_counter()
    model = train_generator(cfg, X_std[fit], real.y[fit], len(real.classes), device,
                            styles=None if real_codes is None else real_codes[fit])
    train_s = time.perf_counter() - t0
    gen = generate(model, np.unique(real.y[fit]), cfg.samples_per_class, seed=cfg.seed + 1, style=style)
    X_syn = std.inverse(gen.X_std)
    # Scores in the fixed embedding space, all fitted on real training data only.
    with threadpool_limits(SCORING_BLAS_THREADS):
        scores, th, cal_realness, real_emb, syn_emb = _score(cfg, model, real, X_std, X_syn, gen, held, fit,
                                                             real_codes)
        real_style = None
        if style is not None:
            scores.style_novelty = style.novelty(gen.X_std)
            real_style = style.real_novelty(X_std, real.speakers)
            th.style_novelty_min = style_novelty_threshold(real_style, cfg.style_novelty_quantile)
    kept, passed = select(scores, gen.y, th, cfg.filters, cfg.keep_fraction)
    return Synthesis(real, std, X_std, held, model, train_s, gen, X_syn, scores, th, kept, passed, cal_realness,
                     real_emb, syn_emb, style, real_style)


def score_arrays(syn: Synthesis) -> dict[str, np.ndarray]:
    """Every sample's score per criterion, as stored beside the samples."""
    s = syn.scores
    out = {"realness": s.realness, "agreement": s.agreement, "nn_distance": s.nn_distance,
           "knn_inside": s.knn_inside.astype(bool)}
    if s.style_novelty is not None:
        out["style_novelty"] = s.style_novelty
    return out


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
    device = resolve_device(cfg.device, "augment.device")
    syn = synthesize(cfg, real, device)
    gen, kept = syn.gen, syn.kept
    report = build_report(params, df, features_dir, syn, str(device))
    with atomic_dir(out_dir) as tmp:
        write_synthetic(tmp / SYNTHETIC_FILE, SyntheticSet(
            X=syn.X_syn, y=gen.y, classes=classes, feature=real.kind, kept=kept, generator=cfg.generator,
            scores=score_arrays(syn), style=gen.style))
        write_plots(tmp, cfg, syn)
        write_report(tmp, report)
    run_id = None
    if track:
        from affectflow.stages import get
        from affectflow.tracking.lineage import lineage

        tags = lineage(params, df, manifest, features_dir, sections=get("augment").sections) if not isinstance(manifest, pd.DataFrame) else {}
        run_id = log_to_mlflow(params, out_dir, report, tags)
    summary = {"generated": report["totals"]["generated"], "kept": report["totals"]["kept"],
               "frechet_before": report["metrics"]["before"]["frechet"],
               "frechet_after": report["metrics"]["after"]["frechet"],
               "precision_after": report["metrics"]["after"]["precision"],
               "epoch_seconds": report["training"]["epoch_seconds_mean"], "device": str(device)}
    return AugmentResult(out_dir, summary, synthetic=out_dir / SYNTHETIC_FILE, mlflow_run_id=run_id)


def write_plots(folder: Path, cfg: AugmentConfig, syn: Synthesis) -> None:
    """projection.png, scores.png and losses.png of a synthesis into `folder`."""
    real, gen, s, th = syn.real, syn.gen, syn.scores, syn.th
    real_2d, syn_2d = _project(syn.real_emb, syn.syn_emb)
    plot_projection(folder / "projection.png", real.classes, real_2d, real.y, syn_2d, gen.y, syn.kept, cfg.seed)
    plot_scores(folder / "scores.png", syn.cal_realness, s.realness, s.agreement, s.nn_distance,
                real_nn_distances(syn.real_emb), th.label_tau, th.delta)
    plot_losses(folder / "losses.png", syn.model.history.losses, f"{cfg.generator} training losses")


def _style_space(cfg: AugmentConfig, real: RealSet, X_std: np.ndarray) -> StyleSpace | None:
    """Style codes of the training speakers (all real training rows, like the standardiser), or None."""
    if cfg.style == "none":
        return None
    corpora = real.corpora if real.corpora is not None else np.full(len(real.y), "", dtype=str)
    return StyleSpace.fit(X_std, real.speakers, corpora, cfg.style_dim, y=real.y,
                          mix_range=cfg.style_mix, noise=cfg.style_noise)


def _style_report(
    cfg: AugmentConfig, style: StyleSpace, real: RealSet, real_novelty: np.ndarray, gen: Generated,
    syn_novelty: np.ndarray, kept: np.ndarray, th: Thresholds,
) -> dict[str, Any]:
    """What the style codes added: per class, mean style novelty of real clips (vs the other
    speakers), kept and rejected samples; and how novel the requested codes were."""
    requested = style.code_novelty(gen.style) if gen.style is not None else np.zeros(0)
    return {
        "dim": style.dim, "mix": list(cfg.style_mix), "noise": cfg.style_noise,
        "n_speakers": len(style.speakers), "n_corpora": len(set(style.corpora)),
        "threshold": th.style_novelty_min, "quantile": cfg.style_novelty_quantile,
        "requested_code_novelty_mean": float(requested.mean()) if len(requested) else float("nan"),
        "per_class": style_table(real.classes, real.y, real_novelty, gen.y, syn_novelty, kept),
    }


def _score(
    cfg: AugmentConfig, model: TrainedGenerator, real: RealSet, X_std: np.ndarray, X_syn: np.ndarray,
    gen: Generated, held: np.ndarray, fit: np.ndarray, real_codes: np.ndarray | None = None,
) -> tuple[Scores, Thresholds, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, thresholds, calibration reals' realness, real embedding, synthetic embedding).

    A style-conditioned critic scores reals with their speakers' codes and samples with theirs."""
    emb = Embedding(cfg.embedding_pca, cfg.seed).fit(real.X)
    real_emb, syn_emb = emb.transform(real.X), emb.transform(X_syn)
    agree = AgreementModel(cfg.agreement_hidden, cfg.agreement_alpha, cfg.agreement_max_iter, cfg.seed)
    agree.fit(emb.features(real.X), real.y)
    # Realness reference: held-out real clips (all training reals when nothing is held out).
    cal = held if held.any() else fit
    if real_codes is None:
        cal_realness = model.realness(X_std[cal], real.y[cal])
        syn_realness = model.realness(gen.X_std, gen.y)
    else:
        cal_realness = model.realness(X_std[cal], real.y[cal], styles=real_codes[cal])
        syn_realness = model.realness(gen.X_std, gen.y, styles=gen.style)
    scores = Scores(
        realness=syn_realness,
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


def build_report(params: Params, df: pd.DataFrame, features_dir: str | Path, syn: Synthesis,
                 device: str) -> dict[str, Any]:
    """report.json of a synthesis: per class real / generated / kept / rejected, real vs synthetic
    metrics, training, lineage, and the style section when the generator had style codes."""
    cfg = params.augment
    real, syn_y, kept, passed, history = syn.real, syn.gen.y, syn.kept, syn.passed, syn.model.history
    real_emb, syn_emb = syn.real_emb, syn.syn_emb
    per_class = per_class_table(real.classes, real.y, syn_y, kept, passed)
    per_class = {k: v for k, v in per_class.items() if v["real"] or v["generated"]}
    totals = {"real": len(real.y), "generated": len(syn_y), "kept": int(kept.sum()),
              "passed": {k: int(m.sum()) for k, m in passed.items()}}
    secs = history.epoch_seconds
    emb_desc = {"egemaps": "standardised features", "embedding": "recognizer embeddings, standardised"}.get(
        real.kind, "per-band mean+std of the segment, standardised")
    if cfg.embedding_pca:
        emb_desc += f" -> PCA({min(cfg.embedding_pca, real_emb.shape[1])}) fitted on real training data"
    metrics: dict[str, Any] = {"embedding": emb_desc, "k": cfg.knn_k,
                               **compare(real_emb, syn_emb, kept, cfg.knn_k, cfg.seed)}
    report: dict[str, Any] = {
        "generator": cfg.generator, "feature": real.kind, "device": device, "classes": real.classes,
        "n_real": len(real.y), "n_real_clips": len(np.unique(real.utt_ids)),
        "sample_shape": list(real.sample_shape), "filters": list(cfg.filters), "keep_fraction": cfg.keep_fraction,
        "per_class": per_class, "totals": totals, "thresholds": syn.th.to_json(real.classes), "metrics": metrics,
        "n_real_generator": int(syn.fit.sum()), "n_real_calibration": int(syn.held.sum()),
        "training": {"epochs": len(secs), "seconds": syn.train_s,
                     "epoch_seconds_mean": float(np.mean(secs)) if secs else 0.0,
                     "epoch_seconds_median": float(np.median(secs)) if secs else 0.0,
                     "final_losses": history.losses[-1] if history.losses else {}},
        "plots": ["projection.png", "scores.png", "losses.png"],
        "lineage": {"training_rows_hash": manifest_hash(training_rows(df, real.classes)),
                    "features_dir": str(features_dir), "augment_params_hash": params.section_hash("augment"),
                    "features_params_hash": params.section_hash("features")},
    }
    if syn.style is not None and syn.scores.style_novelty is not None and syn.real_style is not None:
        report["style"] = _style_report(cfg, syn.style, real, syn.real_style, syn.gen, syn.scores.style_novelty,
                                        kept, syn.th)
    return report


def run(params: Params, inputs: Inputs, out_dir: Path) -> AugmentResult:
    return augment(params, inputs["manifest"], inputs["features"], out_dir)
