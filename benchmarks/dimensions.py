"""Arousal / valence in the leave-one-corpus-out protocol (weak labels), the RAVDESS intensity check,
and calibration (ECE before / after) on every held-out corpus, TESS included.

For each corpus of `studies.generalization.corpora` in turn and each seed: the eGeMAPS recognizer
(`train.model: egemaps_mlp`, 15 epochs, the calibration benchmark's recipe, `train.dimension_weight`
from params.yaml) is trained on the other corpora (the temperature fitted on their validation
speakers, `--val-fraction` of each corpus's speakers) and the evaluate stage scores every clip of
the held-out corpus: UAR, ECE softmax -> calibrated, CCC of arousal and valence against the weak
labels (Russell circumplex point of the clip's class; RAVDESS arousal moved by its intensity).

RAVDESS intensity check: on RAVDESS clips the model did not train on, pairs of clips of the same
speaker, emotion, statement and repetition at `normal` and `strong` intensity; predicted arousal of
strong minus normal, Wilcoxon signed-rank test (two-sided) over the pairs, per emotion and pooled.
Two views: RAVDESS held out (the model never saw RAVDESS nor its intensity labels) and RAVDESS's test
speakers when RAVDESS is a training corpus (the model saw other speakers' intensity labels).

    nice -n 10 .venv/bin/python benchmarks/dimensions.py run --out /tmp/dims-study --seed 0
    .venv/bin/python benchmarks/dimensions.py table --out /tmp/dims-study
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import table  # benchmarks/predict.py

PAIR_KEYS = ("speaker", "emotion", "statement", "repetition")


def ravdess_pairs(pred: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Strong / normal pairs of RAVDESS predictions: one row per (speaker, emotion, statement,
    repetition) with both intensities, and their predicted arousal."""
    rows = pred[pred["corpus"] == "ravdess"].merge(manifest[["utt_id", "intensity"]], on="utt_id")
    parts = rows["utt_id"].str.split("/").str[-1].str.split("-")
    rows = rows.assign(statement=parts.str[4], repetition=parts.str[5])
    wide = rows.pivot_table(index=list(PAIR_KEYS), columns="intensity", values="arousal", aggfunc="first")
    wide = wide.dropna(subset=[c for c in ("normal", "strong") if c in wide.columns])
    return wide.reset_index()


def intensity_test(pairs: pd.DataFrame) -> dict[str, Any]:
    from scipy.stats import wilcoxon

    def one(p: pd.DataFrame) -> dict[str, Any]:
        d = (p["strong"] - p["normal"]).to_numpy()
        if len(d) < 2 or not np.any(d):
            return {"pairs": len(d)}
        res = wilcoxon(d)
        return {"pairs": len(d), "mean_strong": float(p["strong"].mean()), "mean_normal": float(p["normal"].mean()),
                "mean_diff": float(d.mean()), "share_strong_higher": float((d > 0).mean()), "p": float(res.pvalue)}

    return {"all": one(pairs), **{str(e): one(g) for e, g in pairs.groupby("emotion")}}


def run(a: argparse.Namespace) -> None:
    from affectflow.config import load_params, with_overrides
    from affectflow.contracts.manifest import read_manifest
    from affectflow.contracts.model_folder import read_model_meta
    from affectflow.stages.evaluate import evaluate
    from affectflow.studies.generalization import prepare, study_params, trained_recognizer

    out = a.out.resolve()
    loaded = load_params(a.params)
    base = study_params(loaded, out)
    params = with_overrides(base, {"features.kinds": ["egemaps"], "train.model": "egemaps_mlp", "train.epochs": 15,
                                   "train.seed": a.seed, "splits.source_test": True, "evaluate.bootstrap": 200,
                                   "splits.val_fraction": a.val_fraction,
                                   **({"train.dimension_weight": a.dimension_weight} if a.dimension_weight is not None
                                      else {})})
    manifest, features = prepare(params, out)
    df = read_manifest(manifest)
    names = [c.name for c in params.studies.generalization.corpora]
    helds = a.held.split(",") if a.held else names
    for held in helds:
        cell = out / f"held_{held}_seed{a.seed}{a.tag}"
        done = cell / "row.json"
        if done.is_file():
            continue
        path, model_dir = trained_recognizer(params, df, features, [n for n in names if n != held], held, cell)
        m = evaluate(params, model_dir, path, features, cell / "evaluate")
        pred = pd.read_parquet(cell / "evaluate" / "predictions.parquet")
        cal = read_model_meta(model_dir).calibration
        x = m.cross_corpus[held]
        xcal = x.calibration.model_dump() if x.calibration else {}
        dims = m.dimensions
        if dims is None:  # no dimensional head (train.dimension_weight: 0): classes and calibration only
            row0 = {"held_out": held, "seed": a.seed, "uar": x.uar, "temperature": cal.temperature if cal else None,
                    **{k: xcal[k] for k in ("accuracy", "ece_before", "ece_after")}}
            done.write_text(json.dumps(row0, indent=1))
            print(json.dumps(row0), flush=True)
            continue
        cross = dims.sets[f"cross:{held}"]
        row: dict[str, Any] = {
            "held_out": held, "seed": a.seed, "uar": x.uar, "temperature": cal.temperature if cal else None,
            **{k: xcal[k] for k in ("accuracy", "ece_before", "ece_after", "mean_confidence_before",
                                    "mean_confidence_after")},
            "weak_labels": dims.weak_labels,
            **{f"ccc_{d}": cross[d].ccc for d in ("arousal", "valence")},
            **{f"ccc_{d}_ci": [cross[d].ccc_ci_low, cross[d].ccc_ci_high] for d in ("arousal", "valence")},
            "source_test_ccc": {d: {c: r.model_dump(exclude_none=True) for c, r in dims.sets["test"][d].per_corpus.items()}
                                for d in ("arousal", "valence")},
        }
        if held == "ravdess":
            row["intensity_heldout"] = intensity_test(ravdess_pairs(pred[pred["set"] == "cross:ravdess"], df))
        else:
            row["intensity_test_speakers"] = intensity_test(ravdess_pairs(pred[pred["set"] == "test"], df))
        done.write_text(json.dumps(row, indent=1))
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
    print(f"machine: {platform.node()} ({os.cpu_count()} cores); seed {a.seed}")


def _ms(values: list[float], digits: int = 3) -> str:
    v = np.asarray([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return "—" if not v.size else f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if v.size > 1 else f"{v[0]:.{digits}f}"


def from_classes(cell: Path, held: str) -> dict[str, float]:
    """CCC of the class head alone: each clip's expected weak point under its calibrated class
    probabilities (what the dimensional head must beat to add anything on weak labels)."""
    from affectflow.corpora.dimensions import weak_point
    from affectflow.metrics import ccc

    pred = pd.read_parquet(cell / "evaluate" / "predictions.parquet")
    pred = pred[pred["set"] == f"cross:{held}"]
    classes = [c[2:] for c in pred.columns if c.startswith("p_")]
    probs = pred[[f"p_{c}" for c in classes]].to_numpy()
    out = {}
    for k, name in enumerate(("arousal", "valence")):
        point = np.array([weak_point(c)[k] for c in classes])
        out[f"ccc_{name}_from_classes"] = ccc(probs @ point, pred[f"{name}_target"].to_numpy())
    return out


def summary(a: argparse.Namespace) -> None:
    rows = []
    for p in sorted(a.out.glob(f"held_*_seed*{a.tag}/row.json")):
        if not re.fullmatch(rf"held_[a-z_]+_seed\d+{re.escape(a.tag)}", p.parent.name):
            continue
        row = json.loads(p.read_text())
        rows.append({**row, **(from_classes(p.parent, row["held_out"]) if "ccc_arousal" in row else {})})
    if not rows:
        raise SystemExit(f"{a.out}: no finished cells")
    df = pd.DataFrame(rows)
    for col in ("ccc_arousal", "ccc_valence", "ccc_arousal_from_classes", "ccc_valence_from_classes"):
        df[col] = df[col] if col in df.columns else np.nan
    order = [c for c in ("ravdess", "emodb", "tess", "emovo") if c in set(df["held_out"])]
    lines = [table(["held-out corpus", "seeds", "UAR", "CCC arousal", "CCC valence", "CCC arousal, class head only",
                    "CCC valence, class head only", "T", "ECE softmax", "ECE calibrated"],
                   [[h, str(len(g)), _ms(g["uar"]), _ms(g["ccc_arousal"]), _ms(g["ccc_valence"]),
                     _ms(g["ccc_arousal_from_classes"]), _ms(g["ccc_valence_from_classes"]), _ms(g["temperature"], 2),
                     _ms(g["ece_before"]), _ms(g["ece_after"])]
                    for h in order for g in [df[df["held_out"] == h]]])]
    mean = df.groupby("seed")[["uar", "ccc_arousal", "ccc_valence", "ccc_arousal_from_classes",
                               "ccc_valence_from_classes", "ece_before", "ece_after"]].mean()
    lines.append("mean over corpora (± std over seeds): " + ", ".join(
        f"{k} {mean[k].mean():.3f} ± {mean[k].std(ddof=0):.3f}" for k in mean.columns))
    for key, what in (("intensity_heldout", "RAVDESS held out"), ("intensity_test_speakers",
                                                                   "RAVDESS test speakers, RAVDESS in training")):
        if key not in df.columns:
            continue
        cells = [(r["held_out"], r["seed"], r[key]) for _, r in df.iterrows() if isinstance(r.get(key), dict)]
        body = []
        for held, seed, res in cells:
            for emo, t in res.items():
                if "p" in t:
                    body.append([what, held, str(seed), emo, str(t["pairs"]), f"{t['mean_normal']:+.3f}", f"{t['mean_strong']:+.3f}",
                                 f"{t['mean_diff']:+.3f}", f"{100 * t['share_strong_higher']:.0f} %", f"{t['p']:.2g}"])
        lines.append(table(["view", "held-out", "seed", "emotion", "pairs", "arousal normal", "arousal strong",
                            "mean diff", "strong > normal", "Wilcoxon p"], body))
    text = "\n\n".join(lines)
    print(text)
    if a.save:
        a.save.parent.mkdir(parents=True, exist_ok=True)
        a.save.write_text(text + "\n")
        a.save.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--params", type=Path, default=Path("params.yaml"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--val-fraction", type=float, default=0.2)
    r.add_argument("--held", help="comma-separated held-out corpora (default: every study corpus)")
    r.add_argument("--dimension-weight", type=float, help="train.dimension_weight (default: params.yaml's)")
    r.add_argument("--tag", default="", help="suffix of the cell folders (another setting, same features)")
    t = sub.add_parser("table")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--save", type=Path, help="write the tables (.md) and the cells (.json) here")
    t.add_argument("--tag", default="")
    a = ap.parse_args()
    run(a) if a.cmd == "run" else summary(a)


if __name__ == "__main__":
    main()
