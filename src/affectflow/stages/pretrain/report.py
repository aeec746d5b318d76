"""The pretraining report: projection and training-curve PNGs, report.md, and MLflow records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectflow.stages.spec import REPORT_JSON, REPORT_MD
from affectflow.storage import save_figure

MARKERS = "osD^vP*Xh<>p"
"""Marker per emotion class in the projection (cycled)."""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_projection(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], corpora: np.ndarray,
                    emotions: np.ndarray, sources: Sequence[str], method: str) -> Path:
    """One panel per embedding (input features, source-only encoder, DANN encoder): held-out clips
    coloured by corpus (sources in blues, targets in oranges), one marker per emotion."""
    plt = _plt()
    names = sorted(set(corpora.tolist()), key=lambda c: (c not in sources, c))
    cmap_s, cmap_t = plt.get_cmap("Blues"), plt.get_cmap("Oranges")
    n_s = sum(c in sources for c in names)
    n_t = len(names) - n_s
    colour = {}
    for i, c in enumerate(n for n in names if n in sources):
        colour[c] = cmap_s(0.55 + 0.4 * i / max(n_s, 1))
    for i, c in enumerate(n for n in names if n not in sources):
        colour[c] = cmap_t(0.55 + 0.4 * i / max(n_t, 1))
    classes = sorted(set(emotions.tolist()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, xy) in zip(axes[0], panels, strict=True):
        for c in names:
            for j, e in enumerate(classes):
                m = (corpora == c) & (emotions == e)
                if m.any():
                    ax.scatter(xy[m, 0], xy[m, 1], s=12, alpha=0.7, color=colour[c], marker=MARKERS[j % len(MARKERS)],
                               label=f"{c} · {e}", linewidths=0)
        ax.set(title=title, xticks=[], yticks=[], xlabel=f"{method} 1", ylabel=f"{method} 2")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    fig.suptitle("Held-out speakers: source (blue) vs target (orange)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(path: str | Path, histories: dict[str, list[dict[str, float]]]) -> Path:
    """Per epoch: emotion loss, domain loss and λ, domain-head accuracy, source validation UAR."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [h["loss_emotion"] for h in hist], label=name)
        axes[3].plot(ep, [h["source_val_uar"] for h in hist], label=name)
        if "loss_domain" in hist[0]:
            axes[1].plot(ep, [h["loss_domain"] for h in hist], label=f"{name} domain loss")
            axes[1].plot(ep, [h["lambda"] for h in hist], ls="--", label="λ")
            axes[2].plot(ep, [h["domain_acc"] for h in hist], label=f"{name} domain head")
    axes[0].set(title="emotion loss (source)", xlabel="epoch")
    axes[1].set(title="domain loss and λ", xlabel="epoch")
    axes[2].set(title="domain-head accuracy (train batches)", xlabel="epoch", ylim=(0, 1))
    axes[3].set(title="source validation UAR", xlabel="epoch", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def report_md(r: dict[str, Any]) -> str:
    """report.md from report.json's content."""
    d = r["data"]
    lines = [
        "# DANN pretraining", "",
        f"Encoder `{r['arch']}` ({r['feature']}), sources {', '.join(r['domains']['sources'])} → targets "
        f"{', '.join(r['domains']['targets'])}; {r['settings']['epochs']} epochs, λ_max {r['settings']['lambda_max']}, "
        f"input normalisation `{r['settings']['normalize']}`, speaker-adversarial {r['settings']['speaker_adversarial']}; "
        f"{r['device']}, {r['seconds']['dann']:.1f} s.", "",
        "## Data", "",
        "| set | clips | speakers | used for |", "|---|---|---|---|",
        f"| source training | {d['source_train']['clips']} | {d['source_train']['speakers']} | emotion + domain heads |",
        *(f"| target `{t}` training speakers (unlabelled) | {v['clips']} | {v['speakers']} | domain head |"
          for t, v in d["target_train"].items()),
        f"| held out (validation speakers of every corpus) | {d['held_out']['clips']} | {d['held_out']['speakers']} "
        "| domain probe, projection |", "",
        f"Target test speakers ({d['target_test_speakers']}) were never read: asserted on every set.", "",
        "## Domain probe on held-out speakers", "",
        f"A fresh `{r['settings']['probe']}` learns source vs target on held-out embeddings (speaker-grouped "
        "cross-validation); balanced accuracy 0.5 = the corpora cannot be told apart. Proxy A-distance = 2 (1 − 2ε).", "",
        "| embedding | target | probe accuracy | proxy A-distance | probe folds |", "|---|---|---|---|---|",
    ]
    for stage, rows in r["probe"].items():
        for p in rows:
            folds = f"{p['folds']} by speaker" if p["grouped"] else f"{p['folds']} by clip (a domain has < 2 speakers)"
            lines.append(f"| {stage} | {p['target']} | {p['accuracy']:.3f} | {p['a_distance']:.3f} | {folds} |")
    lines += ["", "## Emotion", "",
              "| encoder | source validation UAR | target validation UAR (diagnostic) |", "|---|---|---|"]
    for stage, e in r["emotion"].items():
        lines.append(f"| {stage} | {_fmt(e.get('source_val_uar'))} | {_fmt(e.get('target_val_uar'))} |")
    lines += ["", "Target validation labels are only read for this table, never for training or for choosing "
              "a checkpoint (the last epoch is kept).", "",
              "![projection](projection.png)", "", "![curves](curves.png)", "",
              f"Encoder folder: `{r['encoder_dir']}` (fine-tune with `affectflow train --pretrained`).", ""]
    return "\n".join(lines)


def log_to_mlflow(out_dir: Path, report: dict[str, Any]) -> None:
    """Summary metrics, the report, plots and the encoder folder into the active run."""
    import mlflow

    flat: dict[str, float] = {"seconds_dann": report["seconds"]["dann"]}
    for stage, rows in report["probe"].items():
        for p in rows:
            flat[f"probe_acc_{stage}_{p['target']}"] = p["accuracy"]
            flat[f"a_distance_{stage}_{p['target']}"] = p["a_distance"]
    for stage, e in report["emotion"].items():
        flat |= {f"{k}_{stage}": v for k, v in e.items() if v is not None and not np.isnan(v)}
    mlflow.log_metrics(flat)
    mlflow.log_artifact(str(out_dir / REPORT_JSON))
    mlflow.log_artifact(str(out_dir / REPORT_MD))
    for png in sorted(out_dir.glob("*.png")):
        mlflow.log_artifact(str(png), artifact_path="plots")
    mlflow.log_artifacts(str(out_dir / "encoder"), artifact_path="encoder")
