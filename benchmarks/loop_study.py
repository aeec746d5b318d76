"""The production loop on real corpora (issue 28): per leave-one-corpus-out held-out corpus as the
"production" traffic, (1) does the monitor flag it, and does it stay quiet on held-out speakers of the
training corpora, and (2) does adaptation from the prediction log, decided by DEV without labels,
beat no adaptation on the held-out corpus's other speakers?

Front-ends (`FRONT_ENDS`, `--kind`): eGeMAPS functionals with `egemaps_mlp`, or the `ssl` kind of
Whisper-base (`--kind ssl --layer 3`: `features.ssl.checkpoint: pkg:whisper-base`,
`features.ssl.layers: [3]`, hidden state 3 time-averaged) with `ssl_head` (the pretrain stage's
trainable recognizer on that kind: with one layer, an MLP on it; `ssl_linear` has no encoder
parameters for the gradient reversal to move). The ssl store of one layer is derived from a store
of every layer (`--store`, the key of `features.ssl.layers: []`): the encoder computes every hidden
state and keeps the listed ones, so the slice is the one-layer extraction's array, under its key.

Protocol (the four classes angry / happy / neutral / sad):
- training corpora: the three others; their fold-0 speakers are held out (never trained on: DEV's
  labelled source validation and the monitor's same-distribution stream), the rest train;
- the held-out corpus H: speakers of the first half of its folds (TESS: one of its two speakers) are the production traffic, logged (unlabelled) as
  `affectflow predict` / the servers log it (`serving.prediction_log.Recorder`, the deployed model's
  summariser: a record's moments are the clip's feature vector, its summary the training-standardised
  projection); the other folds are the test speakers, never seen by anything before scoring;
- drift: `serving.monitor.judge` with params.yaml's thresholds, reference = 2,000 training clips of
  the model; `--windows` windows of `monitor.min_clips` clips drawn from H's traffic (must flag) and
  from the training corpora's held-out speakers (false alarms);
- adaptation: the pretrain stage's inputs with `pretrain.target_log` = that log
  (`stages/pretrain/log_target.py`), `pretrain.normalize: corpus` (each corpus standardised by its
  own clips: H by the logged traffic, i.e. the deployment's statistics at the end of the stream),
  source-only (λ = 0) and DANN at λ 0.3 and 1.0, DEV's choice (`stages/pretrain/select.py`), also
  recomputed from the cell's stored per-clip terms (`dev_rules`: the point estimate and the product's
  rule, `pretrain.select_confidence`); every model scores H's test speakers standardised with the
  traffic's statistics, and, as diagnostics DEV never sees, the traffic itself and the source
  validation speakers.

    python benchmarks/loop_study.py --work /tmp/loop-real --seeds 0 1 2 --out benchmarks/results/loop_study.json
    python benchmarks/loop_study.py --kind ssl --layer 3 --work /tmp/wloop --store /tmp/whisper2/base/features \
        --out benchmarks/results/loop_study_whisper.json

`--work` holds `ingest/manifest.parquet` and (unless `--store` names another) `features/` of the four
corpora (`affectflow step ingest` and `affectflow step features --set 'features.kinds=[egemaps]'`;
Whisper: `--set 'features.kinds=[ssl]' --set features.ssl.checkpoint=pkg:whisper-base --set
'features.ssl.layers=[]'`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from affectflow.config import Params, load_params
from affectflow.contracts.feature_store import FeatureSet, write_index, write_shard
from affectflow.contracts.manifest import read_manifest
from affectflow.features.keys import feature_keys
from affectflow.metrics import confusion, uar_cm
from affectflow.models import feature_kind
from affectflow.models.data import NormStats, normalize
from affectflow.models.dev import confident
from affectflow.serving.monitor import Reference, judge
from affectflow.serving.prediction_log import ClipOutcome, PredictionLog, Recorder, Summariser
from affectflow.stages.pretrain.log_target import LOG_CORPUS, with_log_target
from affectflow.stages.pretrain.loop import embed
from affectflow.stages.pretrain.select import candidate_terms, select
from affectflow.stages.pretrain.stage import fit, prepare_inputs

CLASSES = ["angry", "happy", "neutral", "sad"]
CORPORA = ["emodb", "emovo", "ravdess", "tess"]
LAMBDAS = [0.3, 1.0]
WHISPER = "pkg:whisper-base"


@dataclass(frozen=True)
class FrontEnd:
    """What the deployed model reads and which recognizer the pretrain stage trains on it."""

    kind: str
    """The store kind (`features.kinds`)."""
    model: str
    """`train.model`: the recognizer the pretrain stage's DANN trains (its encoder must have parameters)."""


FRONT_ENDS = {"egemaps": FrontEnd("egemaps", "egemaps_mlp"), "ssl": FrontEnd("ssl", "ssl_head")}


def front_end_overrides(kind: str, layer: int) -> dict:
    """params.yaml overrides that make `FRONT_ENDS[kind]` the product's configuration."""
    fe = FRONT_ENDS[kind]
    out: dict = {"train.model": fe.model, "features.kinds": [fe.kind]}
    if fe.kind == "ssl":
        out |= {"features.ssl.checkpoint": WHISPER, "features.ssl.layers": [layer]}
    return out


def one_layer_store(params: Params, df: pd.DataFrame, every_layer: Path, out: Path) -> Path:
    """A store of the `ssl` kind holding `features.ssl.layers` (one layer) under that configuration's
    key, sliced from a store of every hidden state (the key of `features.ssl.layers: []`)."""
    from affectflow.features.ssl import kept_states

    (layer,) = params.features.ssl.layers
    want = feature_keys(params)["ssl"]
    if (out / "index.parquet").exists() and set(FeatureSet(out).index["key"]) == {want}:
        return out
    every = params.model_copy(update={"features": params.features.model_copy(update={
        "ssl": params.features.ssl.model_copy(update={"layers": []})})})
    key_all = feature_keys(every)["ssl"]
    fs = FeatureSet(every_layer)
    keys = set(fs.index.loc[fs.index["kind"] == "ssl", "key"].astype(str))
    if keys != {key_all}:
        raise SystemExit(f"{every_layer}: need the 'ssl' features of {WHISPER} with every layer alone (key {key_all}; "
                         f"has {sorted(keys)})")
    rows = df[df["utt_id"].isin(set(fs.index.loc[fs.index["kind"] == "ssl", "utt_id"]))]
    clips = rows.drop_duplicates("sha256")  # one array per audio content, one index row per clip
    X = fs.matrix("ssl", clips["utt_id"].tolist())
    width = X.shape[1] // len(kept_states(every.features.ssl)[0])
    arrays = {sha: X[i, layer * width:(layer + 1) * width] for i, sha in enumerate(clips["sha256"].astype(str))}
    shard = write_shard(out, "ssl", want, arrays)
    write_index(out, pd.DataFrame({"utt_id": rows["utt_id"].to_numpy(), "kind": "ssl", "key": want,
                                   "file": shard.file, "shape": [[width]] * len(rows),
                                   "member": rows["sha256"].astype(str).to_numpy(), "shard_sha256": shard.sha256}))
    return out


def write_log(where: Path, arrays: list[np.ndarray], key: str, kind: str, prior: NormStats, dims: int,
              seed: int) -> None:
    """H's traffic as a prediction log (shuffled arrival order), each record made by the servers'
    `Recorder` with the deployed model's summariser (prior: its pooled training statistics)."""
    order = np.random.default_rng(seed).permutation(len(arrays))
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    log = PredictionLog(where, flush_records=100_000, clock=lambda: now)
    rec = Recorder(log, Summariser(prior, kind, dims), "study", "predict", key, CLASSES, 16000)
    rec.observe([arrays[i] for i in order])
    rec.record([ClipOutcome(str(i), "ok", None, None, windows=1) for i in order], list(range(len(order))), flush=True)


def stratified(corpus: np.ndarray, mix: dict[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    """n clips drawn per corpus in the training data's proportions (a same-distribution stream mixes
    the training corpora as training did, not one corpus's held-out speaker alone)."""
    out = []
    for c, share in mix.items():
        pool = np.flatnonzero(corpus == c)
        out.append(rng.choice(pool, size=min(len(pool), max(1, round(n * share))), replace=False))
    return np.concatenate(out)


def pooled_stats(train_x: np.ndarray) -> NormStats:
    """The deployed model's pooled training statistics (what its summariser and pooled scoring use)."""
    return NormStats("global", train_x.mean(0).tolist(), np.maximum(train_x.std(0), 1e-8).tolist())


def drift_rates(params, train_x, traffic_x, same_x, probs_traffic, probs_same, windows: int, seed: int,
                same_corpus: np.ndarray, train_mix: dict[str, float], train_speakers: np.ndarray) -> dict:
    """Share of windows flagged (drift) from H's traffic and from held-out training speakers."""
    cfg = params.monitor
    summarise = Summariser(pooled_stats(train_x), feature_kind(params.train.model), cfg.summary_dims)
    rng = np.random.default_rng(seed)
    ref_idx = rng.permutation(len(train_x))[:cfg.reference_clips]
    ref = Reference(np.stack([summarise(a) for a in train_x[ref_idx]]), dict.fromkeys(CLASSES, 0.25), len(train_x),
                    train_speakers[ref_idx])
    out = {}
    for name, x, p in (("cross_corpus", traffic_x, probs_traffic), ("same_distribution", same_x, probs_same)):
        flags, aucs, needed = [], [], []
        for _ in range(windows):
            idx = (rng.choice(len(x), size=min(cfg.min_clips, len(x)), replace=False) if name == "cross_corpus"
                   else stratified(same_corpus, train_mix, cfg.min_clips, rng))
            cur = pd.DataFrame({"summary": [summarise(a) for a in x[idx]], "probabilities": list(p[idx])})
            got = judge(ref, cur, CLASSES, cfg.model_copy(update={"seed": seed}))
            flags.append(bool(got["drift"]))
            aucs.append(got["domain_auc"])
            needed.append(got["auc_needed"])
        out[name] = {"windows": windows, "flagged": float(np.mean(flags)), "auc_mean": float(np.mean(aucs)),
                     "auc_min": float(np.min(aucs)), "auc_max": float(np.max(aucs)),
                     "auc_needed_mean": float(np.mean(needed))}
    return out


def uar(logits: np.ndarray, y: np.ndarray) -> float:
    return float(uar_cm(confusion(y, logits.argmax(1), len(CLASSES))))


def cell(base_params, df: pd.DataFrame, store: Path, held: str, seed: int, work: Path, windows: int) -> dict:
    t0 = time.perf_counter()
    kind = feature_kind(base_params.train.model)
    df = df[df["emotion"].isin(CLASSES)].copy()
    src = df[df["corpus"] != held].copy()
    src["role"] = "source"
    src["split"] = np.where(src["fold"] == 0, "val", "train")
    tgt = df[df["corpus"] == held]
    folds = sorted(tgt["fold"].unique())  # first half of H's speaker folds: traffic; the rest: test (TESS: 1 + 1)
    traffic, test = tgt[tgt["fold"].isin(folds[:len(folds) // 2])], tgt[tgt["fold"].isin(folds[len(folds) // 2:])]
    fs = FeatureSet(store)
    key = str(fs.index.loc[fs.index["kind"] == kind, "key"].iloc[0])
    train_raw = fs.matrix(kind, src[src["split"] == "train"]["utt_id"].tolist())
    pooled = pooled_stats(train_raw)
    log = work / f"log-{held}-{seed}"
    traffic_raw = fs.matrix(kind, traffic["utt_id"].tolist())
    if not log.exists():
        write_log(log, list(traffic_raw), key, kind, pooled, base_params.monitor.summary_dims, seed)
    p = base_params.model_copy(update={
        "pretrain": base_params.pretrain.model_copy(update={"target_log": str(log), "target_corpora": [], "seed": seed,
                                                            "normalize": "corpus"})})
    man, lstore, p = with_log_target(p, src, store, work / f"lt-{held}-{seed}")
    inp = prepare_inputs(p, man, lstore)
    device = torch.device("cpu")
    models = {0.0: fit(inp, device, adversarial=False, seed=seed, desc=f"{held} s{seed} source-only")[0]}
    for lam in LAMBDAS:
        at = replace(inp, params=inp.params.model_copy(update={"pretrain": inp.params.pretrain.model_copy(
            update={"lambda_max": lam})}))
        models[lam] = fit(at, device, adversarial=True, seed=seed, desc=f"{held} s{seed} dann {lam}")[0]
    choice = select(models, inp.data, device, p.train.batch_size, seed, p.pretrain.select_margin,
                    p.pretrain.select_confidence)
    test_x = [normalize(a, inp.norm.stats_for(LOG_CORPUS)) for a in fs.load(kind, test["utt_id"].tolist())]
    y = test["emotion"].map({c: i for i, c in enumerate(inp.classes)}).to_numpy()
    scores = {str(lam): uar(embed(m.recognizer, test_x, device, 256), y) for lam, m in models.items()}
    # diagnostics (labels DEV never sees): the traffic's own UAR (what DEV estimates: the logged
    # distribution), source validation UAR, and DEV's per-clip terms (any variant of the rule re-scored)
    traffic_x = [normalize(a, inp.norm.stats_for(LOG_CORPUS)) for a in traffic_raw]
    y_traffic = traffic["emotion"].map({c: i for i, c in enumerate(inp.classes)}).to_numpy()
    on_traffic = {str(lam): uar(embed(m.recognizer, traffic_x, device, 256), y_traffic) for lam, m in models.items()}
    val_uar = {str(lam): uar(embed(m.recognizer, inp.data.val_x, device, 256), inp.data.val_y) for lam, m in models.items()}
    terms = {str(lam): [np.round(t, 5).tolist() for t in candidate_terms(m, inp.data, device, p.train.batch_size, seed)]
             for lam, m in models.items()}
    # drift: the no-adaptation model's view (pooled training statistics), traffic vs held-out source speakers
    same_rows = src[src["split"] == "val"]
    same_raw = fs.matrix(kind, same_rows["utt_id"].tolist())
    base = models[0.0].recognizer

    def probs(raw: np.ndarray) -> np.ndarray:
        logits = embed(base, [normalize(a, pooled) for a in raw], device, 256)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    mix = src[src["split"] == "train"]["corpus"].value_counts(normalize=True).to_dict()
    drift = drift_rates(p, train_raw, traffic_raw, same_raw, probs(traffic_raw), probs(same_raw), windows, seed,
                        same_rows["corpus"].astype(str).to_numpy(), mix,
                        src[src["split"] == "train"]["speaker"].astype(str).to_numpy())
    return {"held_out": held, "seed": seed, "kind": kind, "model": base_params.train.model, "feature_key": key,
            "uar": scores, "uar_traffic": on_traffic, "uar_source_val": val_uar,
            "dev": {"lambda": choice.lambd, "adapt": choice.adapt, "risks": {str(k): v for k, v in choice.risks.items()},
                    "terms": terms, "val_speaker": inp.rows.source_val["speaker"].astype(str).tolist()},
            "uar_no_adaptation": scores["0.0"], "uar_dev": scores[str(choice.lambd)],
            "drift": drift, "n": {"traffic": len(traffic), "test": len(test), "source_train": int((src["split"] == "train").sum()),
                                  "source_val": len(same_rows)}, "seconds": round(time.perf_counter() - t0, 1)}


def drift_only(base_params, df: pd.DataFrame, store: Path, held: str, seed: int, windows: int) -> dict:
    """The cell's drift figures again (they depend on the features and the monitor, not on a model:
    the class shares that need one are not part of the drift verdict; uniform probabilities here)."""
    kind = feature_kind(base_params.train.model)
    df = df[df["emotion"].isin(CLASSES)].copy()
    src = df[df["corpus"] != held].copy()
    src["split"] = np.where(src["fold"] == 0, "val", "train")
    tgt = df[df["corpus"] == held]
    folds = sorted(tgt["fold"].unique())
    traffic = tgt[tgt["fold"].isin(folds[:len(folds) // 2])]
    fs = FeatureSet(store)
    train = src[src["split"] == "train"]
    same_rows = src[src["split"] == "val"]
    train_raw, traffic_raw = fs.matrix(kind, train["utt_id"].tolist()), fs.matrix(kind, traffic["utt_id"].tolist())
    same_raw = fs.matrix(kind, same_rows["utt_id"].tolist())
    uniform = lambda x: np.full((len(x), len(CLASSES)), 1 / len(CLASSES))  # noqa: E731
    return drift_rates(base_params, train_raw, traffic_raw, same_raw, uniform(traffic_raw), uniform(same_raw), windows,
                       seed, same_rows["corpus"].astype(str).to_numpy(), train["corpus"].value_counts(normalize=True).to_dict(),
                       train["speaker"].astype(str).to_numpy())


def dev_rules(params: Params, r: dict) -> dict:
    """DEV's choice in a cell, recomputed from its stored terms (no retraining): the point estimate
    (select_confidence 0) and the product's rule (params.yaml's select_confidence)."""
    if "terms" not in r["dev"]:
        return {}
    terms = {float(k): (np.asarray(v[0]), np.asarray(v[1])) for k, v in r["dev"]["terms"].items()}
    groups = np.asarray(r["dev"]["val_speaker"])
    cfg = params.pretrain
    out = {}
    for rule, conf in (("dev_point", 0.0), ("dev_confident", cfg.select_confidence)):
        c = confident(terms, groups, cfg.select_margin, conf, r["seed"])
        out[rule] = {"lambda": c.lambd, "adapt": c.adapt, "confidence": c.confidence}
    return out


def slim(r: dict) -> dict:
    """A cell for the results file: DEV's per-clip terms stay in the cell cache (`<work>/loop_cells*`)."""
    return {**r, "dev": {k: v for k, v in r["dev"].items() if k not in ("terms", "val_speaker")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--kind", choices=sorted(FRONT_ENDS), default="egemaps", help="the deployed model's front-end")
    ap.add_argument("--layer", type=int, default=3, help="ssl: the Whisper-base hidden state (0-6)")
    ap.add_argument("--store", type=Path, help="feature store to read (default: <work>/features); ssl: of every layer")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--corpora", nargs="+", default=CORPORA)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/loop_study[_whisper].json")
    ap.add_argument("--drift-only", action="store_true", help="recompute the cached cells' drift figures only")
    a = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params("params.yaml", {**front_end_overrides(a.kind, a.layer), "pretrain.epochs": a.epochs,
                                         "pretrain.threads": 1, "train.threads": 1, "pretrain.device": "cpu"})
    df = read_manifest(a.work / "ingest" / "manifest.parquet")
    store = a.store or a.work / "features"
    tag = ""
    if FRONT_ENDS[a.kind].kind == "ssl":
        store = one_layer_store(params, df, store, a.work / f"features-ssl-l{a.layer}")
        tag = f"-ssl-l{a.layer}"
    out = a.out or Path(f"benchmarks/results/loop_study{'_whisper' if tag else ''}.json")
    cache = a.work / f"loop_cells{tag}"
    cache.mkdir(exist_ok=True)
    rows = []
    for held in a.corpora:
        for seed in a.seeds:
            f = cache / f"{held}-{seed}.json"
            if not f.exists():
                f.write_text(json.dumps(cell(params, df, store, held, seed, cache, a.windows)))
            r = json.loads(f.read_text())
            if a.drift_only:
                r["drift"] = drift_only(params, df, store, held, seed, a.windows)
                f.write_text(json.dumps(r))
            r["rules"] = dev_rules(params, r)
            rows.append(r)
            print(f"{held} seed {seed}: no adaptation {r['uar_no_adaptation']:.3f}, DEV (lambda {r['dev']['lambda']}) "
                  f"{r['uar_dev']:.3f}, all {r['uar']}; drift flagged {r['drift']['cross_corpus']['flagged']:.2f} "
                  f"cross-corpus, {r['drift']['same_distribution']['flagged']:.2f} same-distribution ({r['seconds']} s)",
                  flush=True)
    table = {}
    for held in a.corpora:
        rs = [r for r in rows if r["held_out"] == held]
        table[held] = {k: float(np.mean([r[k] for r in rs])) for k in ("uar_no_adaptation", "uar_dev")}
        for rule in rs[0]["rules"]:
            table[held][f"uar_{rule}"] = float(np.mean([r["uar"][str(r["rules"][rule]["lambda"])] for r in rs]))
            table[held][f"delta_points_{rule}"] = 100 * (table[held][f"uar_{rule}"] - table[held]["uar_no_adaptation"])
            table[held][f"adapted_seeds_{rule}"] = sum(r["rules"][rule]["adapt"] for r in rs)
        table[held]["delta_points"] = 100 * (table[held]["uar_dev"] - table[held]["uar_no_adaptation"])
        table[held]["cross_corpus_flagged"] = float(np.mean([r["drift"]["cross_corpus"]["flagged"] for r in rs]))
        table[held]["same_distribution_flagged"] = float(np.mean([r["drift"]["same_distribution"]["flagged"] for r in rs]))
        table[held]["adapted_seeds"] = sum(r["dev"]["adapt"] for r in rs)
        table[held]["uar_by_lambda"] = {k: float(np.mean([r["uar"][k] for r in rs])) for k in rs[0]["uar"]}
    mean_delta = float(np.mean([t["delta_points"] for t in table.values()]))
    rule_means = {rule: float(np.mean([t[f"delta_points_{rule}"] for t in table.values()])) for rule in rows[0]["rules"]}
    always = {k: float(np.mean([100 * (t["uar_by_lambda"][k] - t["uar_no_adaptation"]) for t in table.values()]))
              for k in rows[0]["uar"] if k != "0.0"}
    result = {"front_end": {"kind": a.kind, "model": params.train.model, "layer": a.layer if tag else None,
                            "checkpoint": WHISPER if tag else None},
              "cells": [slim(r) for r in rows], "table": table, "mean_delta_points": mean_delta, "rule_mean_delta_points": rule_means,
              "always_adapt_mean_delta_points": always}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(table, indent=2), f"\nmean delta (points): DEV as run {mean_delta:+.2f}, by rule {rule_means}, always adapt {always}")


if __name__ == "__main__":
    main()
