"""The augmentation report: counts, distribution metrics before/after filtering, plots, MLflow.

Metrics are computed in the fixed embedding space of `augment.data.Embedding` (fitted on real
training data), so numbers before and after filtering — and across generators — are comparable:
  Fréchet distance  ‖μ_r − μ_s‖² + Tr(Σ_r + Σ_s − 2(Σ_r Σ_s)^½) between Gaussian fits;
  precision / recall (Kynkäänniemi et al., 2019): share of synthetic samples inside the union of
                    real k-NN balls (fidelity) and share of real samples inside the synthetic k-NN
                    balls (coverage).
The Fréchet distance grows as the sample shrinks, so the report also gives the unfiltered set
subsampled to the kept size ("size-matched"): compare "after" with that, not only with "before".
With style codes on, a style section says per class how far kept and rejected samples' styles lie
from the training speakers, next to how far real clips lie from the speakers other than their own:
what the synthetic set adds that the training voices do not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import linalg

from affectflow.stages.augment.quality import inside_balls, knn_radii
from affectflow.stages.spec import REPORT_JSON, REPORT_MD
from affectflow.storage import atomic_write_json, atomic_write_text, save_figure

PLOTS = ("projection.png", "scores.png", "losses.png")
COLORS = {"real": "#9e9e9e", "kept": "#2e7d32", "rejected": "#c62828"}
MAX_POINTS_PER_GROUP = 400
"""Projection plot: at most this many points per (class, group), so dense groups stay readable."""


# ----------------------------------------------------------------------------- metrics
def frechet_distance(A: np.ndarray, B: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two samples (rows = samples); NaN if either has < 2 rows."""
    if len(A) < 2 or len(B) < 2:
        return float("nan")
    mu_a, mu_b = A.mean(0), B.mean(0)
    ca, cb = np.atleast_2d(np.cov(A, rowvar=False)), np.atleast_2d(np.cov(B, rowvar=False))
    covmean = linalg.sqrtm(ca @ cb)
    if not np.isfinite(covmean).all():
        # Singular product: nudge both covariances, as the FID reference implementation does.
        off = np.eye(ca.shape[0]) * 1e-6
        covmean = linalg.sqrtm((ca + off) @ (cb + off))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN balls."""
    if len(real) == 0 or len(fake) == 0:
        return float("nan"), float("nan")
    precision = inside_balls(fake, real, knn_radii(real, k)).mean()
    recall = inside_balls(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def distribution_metrics(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    p, r = precision_recall(real, fake, k)
    return {"n": len(fake), "frechet": frechet_distance(real, fake), "precision": p, "recall": r}


def compare(
    real_emb: np.ndarray, syn_emb: np.ndarray, kept: np.ndarray, k: int, seed: int,
) -> dict[str, dict[str, float]]:
    """Real vs synthetic before filtering, after filtering, and before at the kept sample size."""
    rng = np.random.default_rng(seed)
    n_kept = int(kept.sum())
    matched = rng.choice(len(syn_emb), size=n_kept, replace=False) if n_kept else np.zeros(0, int)
    return {
        "before": distribution_metrics(real_emb, syn_emb, k),
        "after": distribution_metrics(real_emb, syn_emb[kept], k),
        "before_size_matched": distribution_metrics(real_emb, syn_emb[matched], k),
    }


def per_class_table(
    classes: Sequence[str], real_y: np.ndarray, syn_y: np.ndarray, kept: np.ndarray,
    passed: dict[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        s = syn_y == c
        out[name] = {
            "real": int((real_y == c).sum()),
            "generated": int(s.sum()),
            "kept": int((kept & s).sum()),
            "rejected": int((~kept & s).sum()),
            "passed": {k: int((m & s).sum()) for k, m in passed.items()},
        }
    return out


def _mean(v: np.ndarray) -> float | None:
    return float(v.mean()) if len(v) else None


def style_table(
    classes: Sequence[str], real_y: np.ndarray, real_novelty: np.ndarray, syn_y: np.ndarray,
    syn_novelty: np.ndarray, kept: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per class (and "all"): mean style novelty of real clips (vs the nearest other training speaker),
    of kept and of rejected samples (vs the nearest training speaker); None for an empty group."""
    out: dict[str, dict[str, Any]] = {}
    groups = [(name, real_y == c, syn_y == c) for c, name in enumerate(classes)]
    groups.append(("all", np.ones(len(real_y), bool), np.ones(len(syn_y), bool)))
    for name, r, s in groups:
        if not r.any() and not s.any():
            continue
        out[name] = {"real": _mean(real_novelty[r]), "kept": _mean(syn_novelty[s & kept]),
                     "rejected": _mean(syn_novelty[s & ~kept]),
                     "n_kept": int((s & kept).sum()), "n_rejected": int((s & ~kept).sum())}
    return out


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_projection(
    path: Path, classes: Sequence[str], real_2d: np.ndarray, real_y: np.ndarray, syn_2d: np.ndarray,
    syn_y: np.ndarray, kept: np.ndarray, seed: int,
) -> None:
    """One panel per class: real, kept and rejected samples in the first two real-data PCs."""
    plt = _plt()
    present = [c for c in range(len(classes)) if (syn_y == c).any() or (real_y == c).any()]
    cols = min(4, max(len(present), 1))
    rows = int(np.ceil(len(present) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False, sharex=True, sharey=True)
    rng = np.random.default_rng(seed)

    def pts(P: np.ndarray) -> np.ndarray:
        return P if len(P) <= MAX_POINTS_PER_GROUP else P[rng.choice(len(P), MAX_POINTS_PER_GROUP, replace=False)]

    for ax, c in zip(axes.flat, present, strict=False):
        groups = {"real": real_2d[real_y == c], "rejected": syn_2d[(syn_y == c) & ~kept],
                  "kept": syn_2d[(syn_y == c) & kept]}
        for g, P in groups.items():
            P = pts(P)
            ax.scatter(P[:, 0], P[:, 1], s=7, alpha=0.55, c=COLORS[g], label=f"{g} ({len(groups[g])})",
                       marker="o" if g == "real" else ("^" if g == "kept" else "x"), linewidths=0.8)
        ax.set_title(classes[c], fontsize=10)
        ax.legend(fontsize=7, loc="best", markerscale=1.5)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.supxlabel("PC 1 (real training data)")
    fig.supylabel("PC 2")
    fig.tight_layout()
    _save(fig, path)


def plot_scores(
    path: Path, real_realness: np.ndarray, syn_realness: np.ndarray, agreement: np.ndarray,
    nn_dist: np.ndarray, real_nn: np.ndarray, label_tau: float, delta: float,
) -> None:
    """Histograms of the three scores with their thresholds."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    bins = 40
    axes[0].hist(real_realness, bins=bins, alpha=0.6, density=True, label="real (held out)", color=COLORS["real"])
    axes[0].hist(syn_realness, bins=bins, alpha=0.6, density=True, label="synthetic", color="#1565c0")
    axes[0].set_title("realness (critic score)")
    axes[0].legend(fontsize=8)
    axes[1].hist(agreement, bins=np.linspace(0, 1, bins + 1), color="#1565c0")
    axes[1].axvline(label_tau, color="k", ls="--", label=f"τ = {label_tau:g}")
    axes[1].set_title("label agreement P(conditioned label)")
    axes[1].legend(fontsize=8)
    axes[2].hist(real_nn, bins=bins, alpha=0.6, density=True, label="real ↔ real (LOO)", color=COLORS["real"])
    axes[2].hist(nn_dist, bins=bins, alpha=0.6, density=True, label="synthetic ↔ real", color="#1565c0")
    axes[2].axvline(delta, color="k", ls="--", label=f"δ = {delta:.3g}")
    axes[2].set_title("nearest-real distance (embedding)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_losses(path: Path, losses: list[dict[str, float]], title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = sorted({k for row in losses for k in row if not k.startswith("phase_")})
    for k in keys:
        xs = [i for i, row in enumerate(losses) if k in row]
        ax.plot(xs, [losses[i][k] for i in xs], label=k, lw=1)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    save_figure(fig, path)


# ----------------------------------------------------------------------------- report files
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the same facts as report.json, for people."""
    lines = [f"# Augmentation report — {report['generator']} on {report['feature']}", ""]
    t = report["training"]
    lines += [f"Generator trained on {report.get('n_real_generator', report['n_real'])} of {report['n_real']} real "
              f"training samples ({report.get('n_real_calibration', 0)} held out to calibrate realness) for "
              f"{t['epochs']} epochs on "
              f"{report['device']} ({t['epoch_seconds_mean']:.3f} s/epoch). Filters: "
              f"{', '.join(report['filters']) or 'none (unfiltered)'}; keep fraction {report['keep_fraction']}.", ""]
    crit = list(next(iter(report["per_class"].values()))["passed"]) if report["per_class"] else []
    lines += ["## Per class", "",
              "| class | real | generated | kept | rejected | " + " | ".join(f"pass {c}" for c in crit) + " |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(crit)]
    for name, row in report["per_class"].items():
        rejected = row.get("rejected", row["generated"] - row["kept"])
        lines.append(f"| {name} | {row['real']} | {row['generated']} | {row['kept']} | {rejected} | "
                     + " | ".join(str(row["passed"][c]) for c in crit) + " |")
    tot = report["totals"]
    lines += [f"| **all** | {tot['real']} | {tot['generated']} | {tot['kept']} | {tot['generated'] - tot['kept']} | "
              + " | ".join(str(tot["passed"][c]) for c in crit) + " |", ""]
    if "style" in report:
        st = report["style"]
        lines += ["## Style: what was added", "",
                  f"Style codes of {st['n_speakers']} training speakers ({st['n_corpora']} corpora), "
                  f"{st['dim']} dimensions; new codes mix two speakers with w ~ U{tuple(st['mix'])}, "
                  f"noise {st['noise']} std (requested codes lie {_fmt(st['requested_code_novelty_mean'])} "
                  f"from the nearest speaker on average). Style novelty = distance of a sample's read "
                  f"style to the nearest training speaker; for real clips, to the nearest *other* "
                  f"speaker (read by an encoder that did not see their speaker). style_novelty bar: "
                  f"{_fmt(st['threshold'])} (quantile {st['quantile']} of real).", "",
                  "| class | real | kept | rejected | n kept | n rejected |", "|---|---:|---:|---:|---:|---:|"]
        for name, row in st["per_class"].items():
            label = "**all**" if name == "all" else name
            lines.append(f"| {label} | {_fmt(row['real'])} | {_fmt(row['kept'])} | {_fmt(row['rejected'])} | "
                         f"{row['n_kept']} | {row['n_rejected']} |")
        lines.append("")
    if "head" in report:
        h = report["head"]
        lines += ["## Head retrained on real + synthetic embeddings", "",
                  f"{h['n_real']} real and {h['n_synthetic']} kept synthetic embeddings (ratio {h['ratio']}), "
                  f"{h['head_epochs']} epochs, {'a fresh head' if h.get('reinit') else 'the trained head continued'}; "
                  f"loss {h['loss_first']:.3f} -> {h['loss_last']:.3f}. "
                  f"The encoder of {h['base_model']} is unchanged.", ""]
    lines += ["## Real vs synthetic", "", f"Embedding: {report['metrics']['embedding']}; k = {report['metrics']['k']}.", "",
              "| set | n | Fréchet ↓ | precision ↑ | recall ↑ |", "|---|---:|---:|---:|---:|"]
    for key in ("before", "before_size_matched", "after"):
        m = report["metrics"][key]
        lines.append(f"| {key.replace('_', ' ')} | {m['n']} | {_fmt(m['frechet'])} | {_fmt(m['precision'])} | "
                     f"{_fmt(m['recall'])} |")
    th = report["thresholds"]
    lines += ["", "## Thresholds", "", f"- label τ = {th['label_tau']}, near-copy δ = {th['delta']:.4g}",
              "- realness minimum per class: " + ", ".join(f"{k} {v:.3g}" for k, v in th["realness_min"].items())]
    if "style_novelty_min" in th:
        lines.append(f"- style novelty minimum: {th['style_novelty_min']:.4g}")
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def log_to_mlflow(params: Any, out_dir: Path, report: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """One MLflow run (via affectflow.tracking.runs: all params, lineage tags) with the headline metrics
    and the report files; returns the run id. The synthetic set itself is versioned by DVC."""
    import mlflow

    from affectflow.tracking import runs as tracking

    m = report["metrics"]
    metrics = {f"{when}_{k}": float(m[when][k]) for when in ("before", "after", "before_size_matched")
               for k in ("frechet", "precision", "recall") if np.isfinite(m[when][k])}
    metrics.update({"generated": report["totals"]["generated"], "kept": report["totals"]["kept"],
                    "epoch_seconds": report["training"]["epoch_seconds_mean"]})
    style_all = report.get("style", {}).get("per_class", {}).get("all", {})
    for group in ("real", "kept", "rejected"):
        if style_all.get(group) is not None:
            metrics[f"style_novelty_{group}"] = float(style_all[group])
    all_tags = {"stage": "augment", "generator": report["generator"], "feature": report["feature"], **(tags or {})}
    name = f"augment-{report['generator']}-{report['feature']}"
    with tracking.start_run(params, run_name=name, tags=all_tags) as run:
        mlflow.log_metrics(metrics)
        for fname in (REPORT_JSON, REPORT_MD, *report["plots"]):
            if (out_dir / fname).exists():
                mlflow.log_artifact(str(out_dir / fname), artifact_path="augment")
        return str(run.info.run_id)
