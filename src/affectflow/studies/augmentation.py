"""`affectflow ablate augmentation`: does filtered GAN augmentation help, and does the filter matter?

For every seed × speaker-independent test fold × setting (full training set, and a low-resource
subset of at most `low_resource_fraction` of the training speakers) the recognizer is trained
three ways — no augmentation, all generated samples ("unfiltered"), kept samples only
("filtered") — for each generator, and scored on the fold's test speakers (UAR). The generator
sees only that cell's training speakers; validation speakers choose the recognizer's best epoch.
Per seed, UAR is averaged over folds; the table gives mean ± std over seeds.

Every finished run is saved under its cell folder, so an interrupted study resumes where it
stopped. Recogniser runs are named by their synthetic-data settings (`recognizer_tag`), so a study
that changes only those (ratio, minority balancing, loss weight, fade schedule) reuses the trained
generators and the no-augmentation runs. The recognizer is `ablation.model` through the regular `train.train` / `evaluate`
stages (egemaps_mlp by default, which keeps the study tractable on a CPU).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import AugmentAblationConfig, Params, with_overrides
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.contracts.synthetic import SYNTHETIC_FILE, read_synthetic, write_synthetic
from affectflow.runtime.progress import progress
from affectflow.storage import atomic_write_json, atomic_write_text

VARIANTS = ("none", "unfiltered", "filtered")
SETTINGS = ("full", "low_resource")


@dataclass
class AblationResult:
    out_dir: Path
    table_md: str
    summary: dict[str, Any]
    table_path: Path


# ----------------------------------------------------------------------------- data of one cell
def fold_manifest(df: pd.DataFrame, fold: int, params: Params) -> pd.DataFrame:
    """Splits with `fold` as the test speakers (validation re-carved from the rest), as train_folds does."""
    from affectflow.contracts.splits import assign_splits, check_no_leakage

    out = df.copy()
    out["split"] = assign_splits(out, fold, params.splits.val_fraction, params.splits.seed)
    check_no_leakage(out)
    return out


def low_resource(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Drop the training rows of all but ⌊fraction · n⌋ (≥ 1) training speakers, chosen alternately by
    gender; validation and test rows are unchanged. Returns (manifest, kept speakers)."""
    train = df[df["split"] == "train"]
    spk = train.groupby("speaker")["gender"].first().reset_index()
    n_keep = max(1, math.floor(fraction * len(spk) + 1e-9))
    rng = np.random.default_rng([seed, 25])
    pools = [rng.permutation(g["speaker"].to_numpy()).tolist() for _, g in spk.groupby("gender", sort=True)]
    pools = [pools[i] for i in rng.permutation(len(pools))]  # which gender goes first varies by seed too
    keep: list[str] = []
    while len(keep) < n_keep:
        for pool in pools:
            if pool and len(keep) < n_keep:
                keep.append(pool.pop())
    drop = (df["split"] == "train") & ~df["speaker"].isin(keep)
    return df[~drop].reset_index(drop=True), sorted(keep)


def unfiltered_copy(src: Path, dst: Path) -> Path:
    """The same synthetic set with every sample kept (the "augmentation unfiltered" arm)."""
    s = read_synthetic(src, kept_only=False)
    s.kept = np.ones(len(s), dtype=bool)
    write_synthetic(dst / SYNTHETIC_FILE, s)
    return dst


def recognizer_tag(ab: AugmentAblationConfig) -> str:
    """Name of the augmented arms' recogniser settings: `ratio1`, `ratio0.5_balanced`, `ratio1_fade0.5_w0.5`.
    A setting at its default adds nothing, so runs named before it existed are found again."""
    tag = f"ratio{ab.synthetic_ratio:g}" + ("_balanced" if ab.balance_minority else "")
    if ab.synthetic_schedule != "constant":  # the fade fraction only matters with a fade
        tag += f"_{ab.synthetic_schedule}{ab.synthetic_fade_fraction:g}"
    if ab.synthetic_weight != AugmentAblationConfig.model_fields["synthetic_weight"].default:
        tag += f"_w{ab.synthetic_weight:g}"
    return tag


# ----------------------------------------------------------------------------- one run
def _cached(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _train_eval(params: Params, manifest: Path, features_dir: Path, run_dir: Path,
                synthetic: Path | None) -> dict[str, Any]:
    """The train and evaluate stages through the stage runner (no encoder from the workdir)."""
    from affectflow.stages.runner import run_stage

    t0 = time.perf_counter()
    data = {"manifest": Path(manifest), "features": Path(features_dir)}
    tr = run_stage(params, "train", {**data, "synthetic": synthetic}, run_dir / "train", respect_switch=False,
                   optional_defaults=False)
    m = run_stage(params, "evaluate", {**data, "model": tr.model_dir}, run_dir / "evaluate").evaluation
    return {"uar": m.test.uar, "wa": m.test.wa, "macro_f1": m.test.macro_f1,
            "val_uar": float(tr.summary["val_uar"]), "n_train": tr.summary.get("n_train"),
            "n_synthetic": tr.summary.get("n_synthetic", 0), "seconds": round(time.perf_counter() - t0, 1)}


def run_cell(params: Params, df: pd.DataFrame, features_dir: Path, cell_dir: Path, setting: str, seed: int,
             fold: int) -> dict[str, Any]:
    """All variants of one (setting, seed, fold); each finished run is cached in `cell_dir`."""
    from affectflow.stages.augment.stage import augment

    ab = params.studies.augmentation
    cell_dir.mkdir(parents=True, exist_ok=True)
    mdf = fold_manifest(df, fold, params)
    info: dict[str, Any] = {"setting": setting, "seed": seed, "fold": fold}
    if setting == "low_resource":
        mdf, kept_spk = low_resource(mdf, ab.low_resource_fraction, seed)
        info["train_speakers"] = kept_spk
    else:
        info["train_speakers"] = sorted(set(mdf.loc[mdf["split"] == "train", "speaker"]))
    manifest = cell_dir / "manifest.parquet"
    if not manifest.is_file():
        write_manifest(mdf, manifest)
    base = {"train.seed": seed, "augment.seed": seed}
    runs: dict[str, Any] = {}
    res_path = cell_dir / "none.json"
    if (res := _cached(res_path)) is None:
        res = _train_eval(with_overrides(params, {**base, "train.synthetic_ratio": 0.0}), manifest, features_dir,
                          cell_dir / "none", None)
        atomic_write_json(res_path, res)
    runs["none"] = res
    for gen in ab.generators:
        gen_dir = cell_dir / gen
        aug_dir = gen_dir / "augment"
        gp = {**base, "augment.generator": gen}
        if setting == "low_resource" and ab.low_resource_epochs:
            gp["augment.epochs"] = ab.low_resource_epochs
        if not (aug_dir / "report.json").is_file():
            augment(with_overrides(params, gp), manifest, features_dir, aug_dir, track=False)
        report = json.loads((aug_dir / "report.json").read_text())
        runs[f"{gen}/augment"] = {"generated": report["totals"]["generated"], "kept": report["totals"]["kept"],
                                  "train_seconds": report["training"]["seconds"],
                                  "frechet_before": report["metrics"]["before"]["frechet"],
                                  "frechet_after": report["metrics"]["after"]["frechet"],
                                  "precision_before": report["metrics"]["before"]["precision"],
                                  "precision_after": report["metrics"]["after"]["precision"]}
        unf_dir = gen_dir / "unfiltered_set"
        if not (unf_dir / SYNTHETIC_FILE).is_file():
            unfiltered_copy(aug_dir, unf_dir)
        tp = with_overrides(params, {**base, "train.synthetic_ratio": ab.synthetic_ratio,
                                     "train.balance_minority": ab.balance_minority,
                                     "train.synthetic_weight": ab.synthetic_weight,
                                     "train.synthetic_schedule": ab.synthetic_schedule,
                                     "train.synthetic_fade_fraction": ab.synthetic_fade_fraction})
        for variant, syn in (("unfiltered", unf_dir), ("filtered", aug_dir)):
            # The recogniser-side settings are in the name: other ones reuse the generators.
            name = f"{variant}_{recognizer_tag(ab)}"
            res_path = gen_dir / f"{name}.json"
            if (res := _cached(res_path)) is None:
                res = _train_eval(tp, manifest, features_dir, gen_dir / name, syn)
                atomic_write_json(res_path, res)
            runs[f"{gen}/{variant}"] = res
    info["runs"] = runs
    atomic_write_json(cell_dir / "cell.json", info)
    return info


# ----------------------------------------------------------------------------- aggregate & table
def aggregate(cells: list[dict[str, Any]], generators: list[str]) -> dict[str, Any]:
    """Per (setting, generator, variant): UAR averaged over folds per seed, then mean ± std over seeds."""
    out: dict[str, Any] = {}
    for setting in SETTINGS:  # table order, whichever settings ran
        sc = [c for c in cells if c["setting"] == setting]
        if not sc:
            continue
        seeds = sorted({c["seed"] for c in sc})
        out[setting] = {}
        for gen in generators:
            row: dict[str, Any] = {}
            for variant in VARIANTS:
                key = "none" if variant == "none" else f"{gen}/{variant}"
                per_seed = [float(np.mean([c["runs"][key]["uar"] for c in sc if c["seed"] == s])) for s in seeds]
                syn = [c["runs"][key].get("n_synthetic", 0) or 0 for c in sc]
                row[variant] = {"mean": float(np.mean(per_seed)),
                                "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                                "per_seed": per_seed, "n_synthetic_mean": float(np.mean(syn))}
            aug = [c["runs"][f"{gen}/augment"] for c in sc]
            row["kept_fraction"] = float(np.mean([a["kept"] / max(a["generated"], 1) for a in aug]))
            row["precision_before"] = _finite_mean([a["precision_before"] for a in aug])
            row["precision_after"] = _finite_mean([a["precision_after"] for a in aug])
            row["gan_seconds"] = float(np.mean([a["train_seconds"] for a in aug]))
            diffs_none = np.array(row["filtered"]["per_seed"]) - np.array(row["none"]["per_seed"])
            diffs_unf = np.array(row["filtered"]["per_seed"]) - np.array(row["unfiltered"]["per_seed"])
            row["filtered_minus_none"] = {"mean": float(diffs_none.mean()),
                                          "std": float(diffs_none.std(ddof=1)) if len(seeds) > 1 else 0.0}
            row["filtered_minus_unfiltered"] = {"mean": float(diffs_unf.mean()),
                                                "std": float(diffs_unf.std(ddof=1)) if len(seeds) > 1 else 0.0}
            out[setting][gen] = row
    return out


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a metric is NaN when a filter kept nothing); NaN if none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def _pm(d: Mapping[str, float], signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(100 * d['mean'])} ± {100 * d['std']:.1f}"


def _schedule_note(meta: dict[str, Any]) -> str:
    """The loss weight / fade of synthetic rows, when not the defaults (older summaries lack them)."""
    note = ""
    if meta.get("synthetic_schedule", "constant") != "constant":
        note += f"; synthetic rows fade out linearly by {meta['synthetic_fade_fraction']:.0%} of the epochs, real-only after"
    if meta.get("synthetic_weight", 1.0) != 1.0:
        note += f"; synthetic loss weight {meta['synthetic_weight']:g}"
    return note


def render_table(agg: dict[str, Any], meta: dict[str, Any]) -> str:
    """Markdown table of test UAR (%) mean ± std over seeds."""
    lines = [
        "| setting | generator | no augmentation | unfiltered | filtered | filtered − none | filtered − unfiltered "
        "| kept / generated | synthetic rows used (unf. / filt.) | precision before → after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setting, rows in agg.items():
        for gen, r in rows.items():
            lines.append(
                f"| {setting.replace('_', '-')} | {gen} | {_pm(r['none'])} | {_pm(r['unfiltered'])} | "
                f"{_pm(r['filtered'])} | {_pm(r['filtered_minus_none'], True)} | "
                f"{_pm(r['filtered_minus_unfiltered'], True)} | {100 * r['kept_fraction']:.0f} % | "
                f"{r['unfiltered']['n_synthetic_mean']:.0f} / {r['filtered']['n_synthetic_mean']:.0f} | "
                f"{r['precision_before']:.2f} → {r['precision_after']:.2f} |")
    lines += ["", f"Test UAR (%) of `{meta['model']}`, mean ± std over seeds {meta['seeds']} of the mean over "
              f"speaker-independent test folds {meta['folds']}; differences are paired per seed. "
              f"Synthetic ratio {meta['synthetic_ratio']} per real training sample "
              f"(balance_minority={meta['balance_minority']}{_schedule_note(meta)}); low-resource = {meta['low_resource_fraction']:.0%} "
              f"of the training speakers."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the study
def _with_kind(params: Params, kind: str, manifest: str | Path, features_dir: Path, out: Path) -> Path:
    """A feature store with the study's kind: the one given when it has it (a pipeline run computes
    only what its own model reads), else `<out>/features`, computing that kind for the manifest."""
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.stages.features import extract_features

    if FeatureSet(features_dir).has(kind):
        return features_dir
    with_kind = with_overrides(params, {"features.kinds": [kind]})
    return extract_features(with_kind, manifest, out / "features", previous=[features_dir]).out_dir


def ablate_augmentation(params: Params, manifest: str | Path, features_dir: str | Path,
                        out_dir: str | Path) -> AblationResult:
    """Run (or resume) the whole study; writes table_<tag>.md, summary_<tag>.json (`recognizer_tag`) and
    one folder per cell (generators are shared by studies that differ only in the recogniser's settings)."""
    import torch

    from affectflow.models import feature_kind

    ab = params.studies.augmentation
    if ab.threads:
        torch.set_num_threads(ab.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(ab.threads)  # numpy / scikit-learn BLAS too
    kind = feature_kind(ab.model)
    # Study runs are compared by UAR only: no bootstrap intervals, no cross-corpus, no pyfunc model
    # logged per run (train_folds makes the same choice).
    study = with_overrides(params, {"train.model": ab.model, "augment.feature": kind, "evaluate.bootstrap": 0,
                                    "evaluate.cross_corpus": [], "tracking.log_model": False})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    features_dir = _with_kind(study, kind, manifest, Path(features_dir), out)
    df = read_manifest(manifest)
    df = df[df["role"] == "source"] if "role" in df.columns else df
    # Fold-major order: a study stopped early still has every seed and setting of its first folds.
    grid = [(s, seed, fold) for fold in ab.folds for seed in ab.seeds for s in ab.settings]
    cells = []
    t0 = time.perf_counter()
    for setting, seed, fold in progress(grid, desc="ablation", unit="cell"):
        cells.append(run_cell(study, df, features_dir, out / setting / f"seed{seed}" / f"fold{fold}",
                              setting, seed, fold))
    agg = aggregate(cells, list(ab.generators))
    meta = {"model": ab.model, "seeds": list(ab.seeds), "folds": list(ab.folds), "feature": kind,
            "synthetic_ratio": ab.synthetic_ratio, "balance_minority": ab.balance_minority,
            "synthetic_weight": ab.synthetic_weight, "synthetic_schedule": ab.synthetic_schedule,
            "synthetic_fade_fraction": ab.synthetic_fade_fraction,
            "low_resource_fraction": ab.low_resource_fraction, "generators": list(ab.generators),
            "augment": params.augment.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 1)}
    table = render_table(agg, meta)
    summary = {"meta": meta, "results": agg, "cells": cells}
    tag = recognizer_tag(ab)
    atomic_write_json(out / f"summary_{tag}.json", summary)
    atomic_write_text(out / f"table_{tag}.md", table)
    return AblationResult(out, table, summary, out / f"table_{tag}.md")
