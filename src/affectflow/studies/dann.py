"""`affectflow ablate dann`: the cross-corpus table, source corpus -> target corpus.

Conditions (`studies.dann.conditions`), all trained by the stage's own `fit` with the same
encoder, optimiser, epochs and seed, so they differ only in what the name says:
  source_only      source training clips only, source statistics for every corpus
  corpus_std       the usual first fix: each corpus standardised with its own statistics (the
                   target's from its training speakers' unlabelled clips), no target clip in training
  target_bn        control: source + target batches exactly as DANN feeds them, but λ = 0 (the
                   encoder gets no reversed gradient; only BatchNorm sees the target)
  dann             + unlabelled target training speakers through the domain head behind the GRL
                   (the configured adversary: pretrain.* as in params.yaml)
  dann_selected    DANN whose adversary setting is chosen from `studies.dann.grid`, per fold, by
                   the mean UAR over seeds on the target's *validation* speakers (labelled, disjoint
                   from the fold's test speakers): the honest DANN row, since nobody may pick a setting
                   on test speakers
  dann_finetuned   the product path: the DANN encoder (pretrain.* as configured, `normalize`
                   included) written as `affectflow pretrain` writes it, then fine-tuned by the
                   recognizer stage (`train.train(pretrained=)`, labelled source clips only,
                   checkpoint on source validation UAR) and scored as deployed
  dann_corpus_std  DANN on per-corpus-standardised features
  dann_augment     DANN + the augment stage's kept synthetic source samples (one generator per
                   seed and fold, trained on that fold's source training split)
Test set: the target's held-out speakers. Every seed runs every fold (`studies.dann.folds`
rotates which target speakers are held out), and a seed's UAR is over the pooled predictions of all
folds, i.e. every target clip is scored once by a model that never saw its speaker. The table is
mean ± std (ddof=1) of that UAR over seeds; the folds are the same for every seed, so the spread is
training randomness only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from affectflow.config import Params, TrainConfig, with_overrides
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.contracts.splits import apply_splits
from affectflow.metrics import confusion, uar_cm, wa_cm
from affectflow.models import feature_kind
from affectflow.runtime.device import resolve_device
from affectflow.runtime.progress import progress
from affectflow.serving.recognizer import load_model_dir, predict_features, predict_logits
from affectflow.stages.pretrain.stage import Inputs, class_set_uar, fit, prepare_inputs
from affectflow.storage import atomic_path, atomic_write_json, atomic_write_text, save_figure


@dataclass(frozen=True)
class Condition:
    label: str
    normalize: str | None
    """global | corpus; None: the configured pretrain.normalize."""
    adversarial: bool
    augment: bool = False
    lambda_max: float | None = None
    """Override of pretrain.lambda_max (None: the configured value)."""
    select: bool = False
    """Train every `studies.dann.grid` member; keep, per fold, the best on target validation."""
    finetune: bool = False
    """Fine-tune the DANN encoder with the recognizer stage and score that recognizer."""


CONDITIONS: dict[str, Condition] = {
    "source_only": Condition("source-only", "global", False),
    "corpus_std": Condition("per-corpus standardisation", "corpus", False),
    "target_bn": Condition("target batches, λ = 0 (control)", "global", True, lambda_max=0.0),
    "dann": Condition("DANN (configured adversary)", "global", True),
    "dann_selected": Condition("DANN, adversary chosen on target validation", "global", True, select=True),
    "dann_finetuned": Condition("DANN → recognizer stage fine-tune", None, True, finetune=True),
    "dann_corpus_std": Condition("DANN + per-corpus standardisation", "corpus", True),
    "dann_augment": Condition("DANN + augmentation", "global", True, augment=True),
}


class AblationError(RuntimeError):
    """The study cannot run; the message names the setting."""


def study_params(params: Params) -> Params:
    """params with the study's corpora, classes and encoder (`studies.dann`)."""
    ab = params.studies.dann
    if ab.source.name == ab.target.name:
        raise AblationError(f"studies.dann: source and target are both named '{ab.source.name}'")
    tree = params.model_dump(mode="json")
    tree["ingest"].update(corpora=[ab.source.model_copy(update={"role": "source"}).model_dump(mode="json"),
                                   ab.target.model_copy(update={"role": "target"}).model_dump(mode="json")],
                          classes=list(ab.classes), label_map=dict(ab.label_map))
    tree["features"]["kinds"] = [feature_kind(ab.model)]
    tree["train"]["model"] = ab.model
    tree["pretrain"]["target_corpora"] = [ab.target.name]
    return Params.model_validate(tree)


def target_rows(df: pd.DataFrame, target: str, split: str, classes: list[str], manifest: Path) -> pd.DataFrame:
    """The target's labelled rows of one split; validation rows must not share a speaker with test."""
    rows = df[(df["corpus"] == target) & (df["split"] == split) & df["emotion"].isin(classes)]
    if rows.empty:
        raise AblationError(f"{manifest}: this fold has no '{target}' rows with split '{split}' "
                            "(studies.dann.folds, splits.*)")
    if split == "val":
        test_spk = set(df.loc[(df["corpus"] == target) & (df["split"] == "test"), "speaker"])
        shared = sorted(set(rows["speaker"]) & test_spk)
        if shared:
            raise AblationError(f"{manifest}: target speakers {shared} are in both validation and test")
    return rows


def finetune(inp: Inputs, model: torch.nn.Module, df: pd.DataFrame, features: Path, work: Path,
             seed: int, device: torch.device) -> Path:
    """Write the DANN recognizer as `affectflow pretrain` writes its encoder, fine-tune it with the
    recognizer stage on this fold's manifest, return the fine-tuned model folder."""
    import copy

    from affectflow.contracts.manifest import write_manifest
    from affectflow.contracts.model_folder import write_model_folder
    from affectflow.stages.pretrain.stage import ENCODER, encoder_meta
    from affectflow.stages.train.stage import train

    meta = encoder_meta(inp, "ablate-dann", {}, 0.0, str(device))
    write_model_folder(work / ENCODER, copy.deepcopy(model.recognizer).cpu(), meta)
    manifest = work / "manifest.parquet"
    write_manifest(df, manifest)
    tp = with_overrides(inp.params, {"train.seed": seed, "tracking.log_model": False, "evaluate.bootstrap": 0})
    return Path(train(tp, manifest, features, work / "train", pretrained=work / ENCODER).model_dir)


def select_members(records: list[dict[str, Any]], grid: list[str]) -> dict[int, str]:
    """Per fold, the grid member with the highest mean target-validation UAR over seeds (ties: the
    earlier member). Only `target_val_uar` is read: test figures cannot influence the choice."""
    chosen: dict[int, str] = {}
    for fold in sorted({r["fold"] for r in records}):
        mean_val = {m: float(np.mean([r["target_val_uar"] for r in records if r["fold"] == fold and r["member"] == m]))
                    for m in grid if any(r["fold"] == fold and r["member"] == m for r in records)}
        chosen[fold] = max(mean_val, key=lambda m: (mean_val[m], -grid.index(m)))
    return chosen


def prepare_data(params: Params, out: Path) -> tuple[Path, Path]:
    """Ingest and features for the study corpora (the feature store is a cache: re-runs are cheap)."""
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest

    manifest = ingest(params, out / "ingest").manifest
    extract_features(params, manifest, out / "features")
    return Path(manifest), out / "features"


def add_synthetic(inp: Inputs, params: Params, df: pd.DataFrame, features: Path, out: Path, seed: int) -> dict[str, Any]:
    """Train the augment stage on this fold's source training split, add its kept samples."""
    from affectflow.stages.augment.stage import augment
    from affectflow.stages.train.stage import select_synthetic

    ab = params.studies.dann
    kind = inp.kind
    p = with_overrides(params, {"augment.epochs": ab.augment_epochs, "augment.seed": seed, "augment.feature": kind})
    t0 = time.perf_counter()
    res = augment(p, df, features, out, track=False)
    y_of = {c: i for i, c in enumerate(inp.classes)}
    train_y = inp.rows.source_train["emotion"].map(y_of).to_numpy()
    sel = select_synthetic(res.synthetic, kind, inp.classes, train_y,
                           TrainConfig(synthetic_ratio=ab.synthetic_ratio, seed=seed))
    if sel and sel.rows:
        with np.load(res.synthetic, allow_pickle=False) as npz:
            X = np.asarray(npz["X"])[np.asarray(sel.rows, np.int64)]
        inp.add_synthetic(X, np.asarray(sel.y, np.int64), inp.domains.sources[0])
    return {"n_synthetic": len(sel.rows) if sel else 0, "augment_seconds": time.perf_counter() - t0}


def run_ablation(params: Params, out_dir: str | Path, conditions: list[str] | None = None) -> dict[str, Any]:
    """Run every (fold, seed, condition); write results.json, table.md, predictions.parquet, a PNG."""
    from affectflow.tracking import runs as tracking

    out = Path(out_dir)
    sp = study_params(params)
    ab = sp.studies.dann
    names = conditions or list(ab.conditions)
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown:
        raise AblationError(f"studies.dann.conditions: unknown {unknown} (known: {sorted(CONDITIONS)})")
    skipped: dict[str, str] = {}
    if sp.pretrain.threads:
        torch.set_num_threads(sp.pretrain.threads)
    device = resolve_device(sp.pretrain.device, "pretrain.device")
    t_start = time.perf_counter()
    manifest, features = prepare_data(sp, out)
    df0 = read_manifest(manifest)
    target = ab.target.name
    records: list[dict[str, Any]] = []
    preds: list[pd.DataFrame] = []
    grid = list(ab.grid)
    runs = [(f, s, n, m) for f in ab.folds for s in ab.seeds for n in names
            for m in (grid if CONDITIONS[n].select else [None])]
    with tracking.start_run(sp, "ablate-dann", tags={"stage": "ablate_dann"}):
        import mlflow

        cache: dict[tuple[int, str], Inputs] = {}
        for fold, seed, name, member in progress(runs, "ablate dann", total=len(runs), unit="run"):
            cond = CONDITIONS[name]
            df = apply_splits(df0, sp.splits, test_fold=fold)
            lam = sp.pretrain.lambda_max if cond.lambda_max is None else cond.lambda_max
            overrides = {"normalize": cond.normalize or sp.pretrain.normalize, "lambda_max": lam,
                         **(ab.grid[member] if member else {})}
            p = with_overrides(sp, {"pretrain.seed": seed, "train.seed": seed, **{f"pretrain.{k}": v for k, v in overrides.items()}})
            cond_norm = p.pretrain.normalize
            extra: dict[str, Any] = {}
            if cond.augment:
                inp = prepare_inputs(p, df, features)  # fresh: synthetic rows are added in place
                extra = add_synthetic(inp, p, df, features, out / "augment" / f"fold{fold}_seed{seed}", seed)
            else:
                key = (fold, cond_norm)
                if key not in cache:
                    cache = {k: v for k, v in cache.items() if k[0] == fold}
                    cache[key] = prepare_inputs(p, df, features)
                inp = cache[key]
                inp.params = p
            model, hist, secs = fit(inp, device, cond.adversarial, seed, desc=f"{name}:{member}" if member else name)
            test = target_rows(df, target, "test", inp.classes, manifest)
            val = target_rows(df, target, "val", inp.classes, manifest)
            if cond.finetune:
                t0 = time.perf_counter()
                rec_dir = finetune(inp, model, df, features, out / "finetune" / f"fold{fold}_seed{seed}", seed, device)
                extra = {"finetune_seconds": time.perf_counter() - t0}
                scored: _Scored = _Deployed(load_model_dir(rec_dir), inp)
            else:
                scored = _Pretrained(model, inp, device)
            uar, pred = class_set_uar(scored.logits(test), test["emotion"], inp.classes)
            val_uar = class_set_uar(scored.logits(val), val["emotion"], inp.classes)[0]
            src_test = df[(df["corpus"] == ab.source.name) & (df["split"] == "test") & df["emotion"].isin(inp.classes)]
            src_uar = (class_set_uar(scored.logits(src_test), src_test["emotion"], inp.classes)[0]
                       if len(src_test) else float("nan"))
            rec = {"condition": name, "member": member, "fold": fold, "seed": seed, "target_uar": uar,
                   "target_val_uar": val_uar, "source_test_uar": src_uar,
                   "source_val_uar": hist[-1]["source_val_uar"], "train_seconds": secs,
                   "test_speakers": sorted(set(test["speaker"])), "n_test": len(test), **extra}
            records.append(rec)
            preds.append(pd.DataFrame({"utt_id": test["utt_id"].to_numpy(), "speaker": test["speaker"].to_numpy(),
                                       "emotion": test["emotion"].to_numpy(), "predicted": pred,
                                       "condition": name, "member": member or "", "seed": seed, "fold": fold}))
            mlflow.log_metrics({f"{name}{'_' + member if member else ''}_uar_fold{fold}_seed{seed}": uar})
        records, pred_df, chosen = resolve_selection(records, pd.concat(preds, ignore_index=True), grid)
        summary = summarise(records, pred_df, names, sp, device, time.perf_counter() - t_start, skipped, chosen)
        write_outputs(out, summary, pred_df)
        mlflow.log_metrics({f"{n}_uar_mean": r["uar_mean"] for n, r in summary["table"].items()}
                           | {f"{n}_uar_std": r["uar_std"] for n, r in summary["table"].items()})
        for f in ("results.json", "table.md", "ablation.png"):
            mlflow.log_artifact(str(out / f))
    return summary


class _Scored(Protocol):
    def logits(self, rows: pd.DataFrame) -> np.ndarray: ...


class _Pretrained:
    """The DANN model's own recognizer, on inputs normalised the way DANN saw its corpus."""

    def __init__(self, model: torch.nn.Module, inp: Inputs, device: torch.device):
        self.model, self.inp, self.device = model, inp, device

    def logits(self, rows: pd.DataFrame) -> np.ndarray:
        rows_x = self.inp.normalised(rows)
        if not rows_x:
            return np.zeros((0, 0), np.float32)
        return predict_logits(self.model.recognizer, rows_x, self.device, self.inp.params.pretrain.batch_size).numpy()


class _Deployed:
    """A fine-tuned recognizer folder scored as deployed: its own normalisation and class order."""

    def __init__(self, rec: Any, inp: Inputs):
        self.rec, self.inp = rec, inp
        if list(rec.classes) != list(inp.classes):
            raise AblationError(f"fine-tuned classes {rec.classes} differ from the study's {inp.classes}")

    def logits(self, rows: pd.DataFrame) -> np.ndarray:
        fs = FeatureSet(self.inp.features_dir)
        probs = predict_features(self.rec, fs.load(self.inp.kind, rows["utt_id"].tolist()),
                                 corpora=rows["corpus"].astype(str).tolist(), whole_set=True)
        return np.log(probs + 1e-12)


def resolve_selection(records: list[dict[str, Any]], pred: pd.DataFrame, grid: list[str]
                      ) -> tuple[list[dict[str, Any]], pd.DataFrame, dict[int, str]]:
    """Turn the grid runs of `dann_selected` into that condition's rows (the chosen member per fold);
    every member's runs stay, as conditions `dann_selected:<member>`, for the grid table."""
    sel = [r for r in records if r["member"]]
    if not sel:
        return records, pred, {}
    chosen = select_members(sel, grid)
    out = [r for r in records if not r["member"]]
    for r in sel:
        out.append({**r, "condition": f"dann_selected:{r['member']}"})
        if chosen[r["fold"]] == r["member"]:
            out.append(dict(r))
    is_sel = pred["member"] != ""
    keep = pred[~is_sel]
    grid_pred = pred[is_sel].assign(condition=lambda d: "dann_selected:" + d["member"])
    picked = pred[is_sel & (pred["member"] == pred["fold"].map(chosen))]
    return out, pd.concat([keep, picked, grid_pred], ignore_index=True), chosen


def pooled_uar(pred: pd.DataFrame) -> tuple[float, float]:
    """UAR and WA of one seed's predictions pooled over folds."""
    classes = sorted(set(pred["emotion"]) | set(pred["predicted"]))
    idx = {c: i for i, c in enumerate(classes)}
    cm = confusion(pred["emotion"].map(idx).to_numpy(), pred["predicted"].map(idx).to_numpy(), len(classes))
    return uar_cm(cm), wa_cm(cm)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(records: list[dict[str, Any]], pred: pd.DataFrame, names: list[str], params: Params,
              device: torch.device, seconds: float, skipped: dict[str, str],
              chosen: dict[int, str] | None = None) -> dict[str, Any]:
    ab = params.studies.dann
    rec = pd.DataFrame(records)
    table = _rows(rec, pred, names, params)
    grid: dict[str, dict[str, Any]] = {}
    if chosen:
        members = [f"dann_selected:{m}" for m in ab.grid]
        grid = _rows(rec, pred, members, params)
        for m, row in zip(ab.grid, grid.values(), strict=True):
            row["label"] = m
            row["overrides"] = dict(ab.grid[m])
            row["chosen_in_folds"] = [f for f, c in sorted(chosen.items()) if c == m]
        table["dann_selected"]["chosen"] = {str(f): m for f, m in sorted(chosen.items())}
    verdict = {}
    for row in ("dann", "dann_selected"):
        if row in table and "source_only" in table:
            verdict[f"{row}_minus_source_only"] = round(table[row]["uar_mean"] - table["source_only"]["uar_mean"], 4)
        if row in table and "corpus_std" in table:
            verdict[f"{row}_minus_corpus_std"] = round(table[row]["uar_mean"] - table["corpus_std"]["uar_mean"], 4)
    return {
        "source": ab.source.name, "target": ab.target.name, "classes": list(ab.classes),
        "label_map": dict(ab.label_map), "model": ab.model, "seeds": list(ab.seeds), "folds": list(ab.folds),
        "n_target_clips": int(pred.drop_duplicates("utt_id").shape[0]), "device": str(device),
        "torch_threads": torch.get_num_threads(), "wall_seconds": round(seconds, 1),
        "pretrain": params.pretrain.model_dump(mode="json"),
        "mlp": params.train.mlp.model_dump(mode="json"), "train_finetune": params.train.finetune,
        "table": table, "grid": grid, "verdict": verdict,
        "skipped": skipped, "runs": records,
    }


def _rows(rec: pd.DataFrame, pred: pd.DataFrame, names: list[str], params: Params) -> dict[str, dict[str, Any]]:
    """One table row per condition: pooled-over-folds UAR / WA per seed, then mean ± std."""
    ab = params.studies.dann
    table: dict[str, dict[str, Any]] = {}
    for n in names:
        per_seed = [pooled_uar(pred[(pred["condition"] == n) & (pred["seed"] == s)]) for s in ab.seeds]
        uar_m, uar_s = _mean_std([u for u, _ in per_seed])
        wa_m, wa_s = _mean_std([w for _, w in per_seed])
        r = rec[rec["condition"] == n]
        fold_m, fold_s = _mean_std(r["target_uar"].tolist())
        table[n] = {"label": CONDITIONS[n].label if n in CONDITIONS else n, "uar_mean": round(uar_m, 4), "uar_std": round(uar_s, 4),
                    "uar_per_seed": [round(u, 4) for u, _ in per_seed], "wa_mean": round(wa_m, 4),
                    "wa_std": round(wa_s, 4), "fold_uar_mean": round(fold_m, 4), "fold_uar_std": round(fold_s, 4),
                    "source_test_uar_mean": round(float(r["source_test_uar"].mean()), 4),
                    "target_val_uar_mean": round(float(r["target_val_uar"].mean()), 4),
                    "train_seconds_mean": round(float(r["train_seconds"].mean()), 2),
                    "train_seconds_total": round(float(r["train_seconds"].sum()), 1), "runs": len(r)}
        if "n_synthetic" in r and r["n_synthetic"].notna().any():
            table[n]["n_synthetic_mean"] = round(float(r["n_synthetic"].mean()), 1)
            table[n]["augment_seconds_mean"] = round(float(r["augment_seconds"].mean()), 2)
    return table


def table_md(s: dict[str, Any]) -> str:
    lines = [f"# Cross-corpus: {s['source']} (source) → {s['target']} (target)", "",
             f"Classes {', '.join(s['classes'])}; encoder `{s['model']}`; {len(s['seeds'])} seeds × "
             f"{len(s['folds'])} target test folds; UAR over all {s['n_target_clips']} {s['target']} clips, each "
             f"predicted by a model that never saw its speaker; mean ± std over seeds; {s['device']}.", "",
             f"| condition | {s['target']} test UAR | WA | mean fold UAR | {s['target']} val UAR | "
             f"{s['source']} test UAR | train s / run |",
             "|---|---|---|---|---|---|---|"]
    lines += [_md_row(r) for r in s["table"].values()]
    for n, why in s["skipped"].items():
        lines.append(f"| {CONDITIONS[n].label} | not run: {why} | | | | | |")
    if s.get("grid"):
        chosen = s["table"]["dann_selected"]["chosen"]
        lines += ["", f"`dann_selected` chose, per fold (by mean {s['target']} validation UAR over seeds): "
                  + ", ".join(f"fold {f}: {m}" for f, m in chosen.items()) + ". Every grid member, for reference "
                  "(its test UAR was not used for the choice):", "",
                  f"| grid member | {s['target']} test UAR | WA | mean fold UAR | {s['target']} val UAR | "
                  f"{s['source']} test UAR | train s / run |", "|---|---|---|---|---|---|---|"]
        lines += [_md_row(r) for r in s["grid"].values()]
    lines += ["", f"Wall time {s['wall_seconds']:.0f} s (ingest, features, every run).", ""]
    return "\n".join(lines)


def _md_row(r: dict[str, Any]) -> str:
    return (f"| {r['label']} | **{100 * r['uar_mean']:.1f} ± {100 * r['uar_std']:.1f}** | "
            f"{100 * r['wa_mean']:.1f} ± {100 * r['wa_std']:.1f} | {100 * r['fold_uar_mean']:.1f} ± "
            f"{100 * r['fold_uar_std']:.1f} | {100 * r['target_val_uar_mean']:.1f} | "
            f"{100 * r['source_test_uar_mean']:.1f} | {r['train_seconds_mean']:.1f} |")


def plot(path: Path, s: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(s["table"].values())
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(rows), 3.8))
    x = np.arange(len(rows))
    ax.bar(x, [100 * r["uar_mean"] for r in rows], yerr=[100 * r["uar_std"] for r in rows], capsize=4, color="#4C72B0")
    for i, r in enumerate(rows):
        ax.scatter(np.full(len(r["uar_per_seed"]), i), [100 * u for u in r["uar_per_seed"]], color="k", s=10, zorder=3)
    ax.axhline(100 / len(s["classes"]), color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x, [r["label"].replace(" + ", "\n+ ") for r in rows], fontsize=7)
    ax.set(ylabel=f"{s['target']} UAR (%)", title=f"{s['source']} → {s['target']}, mean ± std over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def write_outputs(out: Path, s: dict[str, Any], pred: pd.DataFrame) -> None:
    atomic_write_json(out / "results.json", s)
    atomic_write_text(out / "table.md", table_md(s))
    with atomic_path(out / "predictions.parquet") as tmp:
        pred.to_parquet(tmp, index=False)
    plot(out / "ablation.png", s)
