"""Whisper front-end on the leave-one-corpus-out protocol: features extracted once (cached), then
the probe's recipe and its variants scored with every corpus held out in turn.

    # 1. extract (resumable; nice it, the box is shared): every 4-class clip of the four corpora
    nice -n 10 .venv/bin/python benchmarks/whisper_loco.py extract --checkpoint pkg:whisper-base
    nice -n 10 .venv/bin/python benchmarks/whisper_loco.py extract --checkpoint pkg:whisper-tiny.en
    nice -n 10 .venv/bin/python benchmarks/whisper_loco.py extract --checkpoint pkg:whisper-base --window padded --sample 40
    # 2. score: writes benchmarks/results/generalization/whisper_loco.{json,md}, whisper_window.md
    .venv/bin/python benchmarks/whisper_loco.py loco
    .venv/bin/python benchmarks/whisper_loco.py compare-window

Features are `affectflow.features.ssl.SslEncoder` vectors (the product's `ssl` kind: every hidden
state, time-averaged), so a row here is what `features.ssl.checkpoint: pkg:whisper-base` computes.
The cache (`--cache`, default ~/.cache/affectflow/whisper_loco) holds one npz per corpus and
checkpoint; no audio is copied.

Protocols, held-out corpus H never used for any choice (the generalization study's, issue 27):
- offline (whole corpus): H standardised with its own statistics (every clip seen at once), the
  training corpora each with their own: the study's `normalize: corpus` case.
- streamed: H's clips arrive one at a time in a seeded shuffled order; each is standardised with
  the deployment statistics of the clips before it (the pooled training statistics until 20 clips,
  then the running mean / variance, forgetting beyond 1000 clips: `train.deploy_min_clips`,
  `train.deploy_window`), never with itself or later clips.
- streamed_pooled: one clip at a time, the pooled training statistics only (the probe's protocol).
Rows: `probe_mid` (the issue's recipe: middle layer, mean-pooled, logistic regression C=0.1),
`last` (last layer), `mean_layers` (plain average of layers), `inner_layer` (the probe's layer
chosen by leave-one-source-corpus-out inside the training corpora, streamed UAR), `head`
(affectflow's `SslHead`: learned softmax layer weights + MLP, trained with the study's seeds). 3 seeds; per-class recall; collapse
flags (`affectflow.metrics.collapse`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np

CORPORA = ("ravdess", "emodb", "tess", "emovo")
CLASSES = ("angry", "happy", "neutral", "sad")
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CACHE = Path.home() / ".cache" / "affectflow" / "whisper_loco"
PART = 32  # clips per cached part (resumable extraction)


def clips(data: Path, corpus: str) -> list[tuple[str, str, str, str]]:
    """(utt_id, path, speaker, label) of every clip of the four study classes."""
    from affectflow.corpora import get_adapter

    return [(u.utt_id, u.path, f"{corpus}/{u.speaker}", u.label)
            for u in get_adapter(corpus)(str(data / corpus)) if u.label in CLASSES]


def feature_dir(cache: Path, checkpoint: str, window: str) -> Path:
    return cache / checkpoint.replace(":", "_").replace("/", "_") / window


def extract(a: argparse.Namespace) -> None:
    import torch

    from affectflow.audio import load
    from affectflow.config import SslConfig
    from affectflow.features.ssl import SslEncoder
    from affectflow.runtime.progress import progress
    from affectflow.storage import atomic_path

    torch.set_num_threads(a.threads)
    cfg = SslConfig(checkpoint=a.checkpoint, window=a.window, batch_size=a.batch_size)
    enc = SslEncoder(cfg, 16000)
    out = feature_dir(a.cache, a.checkpoint, a.window)
    out.mkdir(parents=True, exist_ok=True)
    audio_s, wall = 0.0, 0.0
    for corpus in a.corpora:
        rows = clips(a.data, corpus)
        if a.sample:
            rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:a.sample // len(a.corpora)]]
        for p in progress(range(0, len(rows), PART), desc=f"{corpus} {a.checkpoint} {a.window}"):
            path = out / f"{corpus}.{p // PART:03d}.npz"
            if path.exists():
                continue
            part = rows[p:p + PART]
            waves = [load(r[1], 16000) for r in part]
            t = time.perf_counter()
            X = np.stack(enc(waves)).reshape(len(part), len(enc.layers), enc.hidden)
            wall += time.perf_counter() - t
            audio_s += sum(len(w) for w in waves) / 16000
            with atomic_path(path) as tmp:
                np.savez(tmp, X=X.astype(np.float16), utt_id=[r[0] for r in part], speaker=[r[2] for r in part],
                         label=[r[3] for r in part], seconds=[len(w) / 16000 for w in waves])
    if wall:
        load_avg = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(f"{a.checkpoint} {a.window}: {audio_s:.0f} s of audio in {wall:.0f} s = {audio_s / wall:.1f}x real time, "
              f"{a.threads} threads, load: {load_avg}")


def read_features(cache: Path, checkpoint: str, window: str) -> dict[str, dict[str, np.ndarray]]:
    """Per corpus: X (N, L, D) float32, y (N,) class indices, speaker, utt_id."""
    out = {}
    folder = feature_dir(cache, checkpoint, window)
    for corpus in CORPORA:
        parts = sorted(folder.glob(f"{corpus}.*.npz"))
        if not parts:
            continue
        z = [np.load(p) for p in parts]
        labels = np.concatenate([d["label"] for d in z])
        out[corpus] = {"X": np.concatenate([d["X"] for d in z]).astype(np.float32),
                       "y": np.array([CLASSES.index(lab) for lab in labels]),
                       "speaker": np.concatenate([d["speaker"] for d in z]),
                       "utt_id": np.concatenate([d["utt_id"] for d in z])}
    return out


# ---------------------------------------------------------------------------------- scoring
def standardise(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu, sd = ref.mean(0), ref.std(0)
    return (X - mu) / np.where(sd > 1e-8, sd, 1.0)


def layer_view(X: np.ndarray, view: str) -> np.ndarray:
    """(N, L, D) -> what a row reads: one layer (`mid`, `last`, `l<k>`), the mean of the layers, or all."""
    n_layers = X.shape[1]
    if view == "mid":
        return X[:, n_layers // 2]
    if view == "last":
        return X[:, -1]
    if view == "mean_layers":
        return X.mean(1)
    if view.startswith("l"):
        return X[:, int(view[1:])]
    return X  # all layers, for the head


PROTOCOLS = ("streamed", "streamed_pooled", "offline")


def streamed(X: np.ndarray, prior_mean: np.ndarray, prior_std: np.ndarray, min_clips: float) -> np.ndarray:
    """Rows of `X` (in arrival order) each standardised by the product's deployment statistics of
    the rows before it (`affectflow.serving.deployment`): the prior below `min_clips` rows, then
    their running statistics (`train.deploy_min_clips`, `train.deploy_window` as configured)."""
    from affectflow.config import TrainConfig
    from affectflow.models.data import NormStats
    from affectflow.serving.deployment import DeploymentStats

    prior = NormStats(mode="global", mean=prior_mean.tolist(), std=prior_std.tolist())
    stats = DeploymentStats(prior=prior, min_clips=min_clips, window=TrainConfig().deploy_window)  # type: ignore[arg-type]
    return np.stack(stats.normalise(list(X))).astype(np.float32)


def split_norm(feats: dict[str, dict[str, np.ndarray]], held: str, view: str, seed: int
               ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Training matrix (each corpus by its own statistics) and the held-out corpus under each
    protocol, rows in arrival order (also returned) for the streamed ones, manifest order offline."""
    from affectflow.config import TrainConfig
    from affectflow.studies.generalization import stream_order  # the study's arrival order

    train = [c for c in feats if c != held]
    raw = {c: layer_view(feats[c]["X"], view) for c in feats}
    flat = {c: v.reshape(len(v), -1) for c, v in raw.items()}
    Xtr = np.concatenate([standardise(flat[c], flat[c]) for c in train])
    ytr = np.concatenate([feats[c]["y"] for c in train])
    pooled = np.concatenate([flat[c] for c in train])
    mu, sd = pooled.mean(0), np.where(pooled.std(0) > 1e-8, pooled.std(0), 1.0)
    shape = raw[held].shape[1:]
    order = stream_order(len(flat[held]), seed)
    tests = {"offline": standardise(flat[held], flat[held]),
             "streamed": streamed(flat[held][order], mu, sd, TrainConfig().deploy_min_clips),
             "streamed_pooled": streamed(flat[held][order], mu, sd, np.inf)}
    return Xtr.reshape(-1, *shape), ytr, {k: v.reshape(-1, *shape) for k, v in tests.items()}, order


def inner_layer(feats: dict[str, dict[str, np.ndarray]], held: str) -> str:
    """The probe's layer chosen without `held`: each training corpus held out in turn (inner LOCO),
    the layer with the best mean streamed UAR (seed 0)."""
    train = {c: v for c, v in feats.items() if c != held}
    n_layers = next(iter(train.values()))["X"].shape[1]
    scores = {}
    for layer in range(1, n_layers):
        uars = []
        for inner in train:
            Xtr, ytr, tests, order = split_norm(train, inner, f"l{layer}", 0)
            (pred,) = fit_predict("logreg", Xtr, ytr, [tests["streamed"]], 0)
            uars.append(score(train[inner]["y"][order], pred)["uar"])
        scores[f"l{layer}"] = float(np.mean(uars))
    best = max(scores, key=scores.__getitem__)
    print(f"  held out {held}: inner LOCO streamed UAR per layer {scores} -> {best}")
    return best


def fit_predict(method: str, Xtr: np.ndarray, ytr: np.ndarray, tests: list[np.ndarray], seed: int
                ) -> list[np.ndarray]:
    if method == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
        clf.fit(Xtr, ytr)
        return [clf.predict(X) for X in tests]
    return head_fit_predict(Xtr, ytr, tests, seed)


def head_fit_predict(Xtr: np.ndarray, ytr: np.ndarray, tests: list[np.ndarray], seed: int,
                     epochs: int = 30) -> list[np.ndarray]:
    """affectflow's `SslHead` (softmax layer weights + MLP, config defaults), class-balanced
    cross-entropy, AdamW 1e-3, a fixed budget (no validation on the held-out corpus)."""
    import torch

    from affectflow.models.ssl import SslHead, SslHeadArch

    torch.manual_seed(seed)
    n_layers, dim = Xtr.shape[1], Xtr.shape[2]
    model = SslHead(n_layers * dim, len(CLASSES), SslHeadArch(n_layers=n_layers))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    counts = np.bincount(ytr, minlength=len(CLASSES))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(len(ytr) / (len(CLASSES) * counts), dtype=torch.float32))
    X = torch.from_numpy(Xtr.reshape(len(Xtr), -1).astype(np.float32))
    y = torch.from_numpy(ytr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for b in np.array_split(rng.permutation(len(X)), max(1, len(X) // 64)):
            opt.zero_grad()
            loss = loss_fn(model(X[b], None), y[b])
            loss.backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        return [model(torch.from_numpy(T.reshape(len(T), -1).astype(np.float32)), None).argmax(1).numpy()
                for T in tests]


def score(y: np.ndarray, pred: np.ndarray) -> dict[str, object]:
    from affectflow.metrics import collapse, confusion, recalls, uar_cm

    cm = confusion(y, pred, len(CLASSES))
    rec = recalls(cm)
    flag = collapse(cm, CLASSES)
    return {"uar": 100 * float(uar_cm(cm)), "recall": {c: 100 * float(r) for c, r in zip(CLASSES, rec, strict=True)},
            "collapse": flag.collapsed, "collapse_reasons": flag.reasons}


ROWS = {  # name -> (checkpoint, window, layer view, classifier)
    "base_probe_mid": ("pkg:whisper-base", "clip", "mid", "logreg"),
    "base_last": ("pkg:whisper-base", "clip", "last", "logreg"),
    "base_mean_layers": ("pkg:whisper-base", "clip", "mean_layers", "logreg"),
    "base_inner_layer": ("pkg:whisper-base", "clip", "inner", "logreg"),
    "base_head": ("pkg:whisper-base", "clip", "all", "head"),
    "tiny_en_probe_mid": ("pkg:whisper-tiny.en", "clip", "mid", "logreg"),
    "tiny_en_head": ("pkg:whisper-tiny.en", "clip", "all", "head"),
}


def loco(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)  # small heads: threads only contend on the shared box
    results: dict[str, dict[str, object]] = {}
    cache_feats: dict[tuple[str, str], dict[str, dict[str, np.ndarray]]] = {}
    for name in a.rows:
        ckpt, window, view, method = ROWS[name]
        if (ckpt, window) not in cache_feats:
            cache_feats[(ckpt, window)] = read_features(a.cache, ckpt, window)
        feats = cache_feats[(ckpt, window)]
        if set(feats) != set(CORPORA):
            print(f"{name}: features missing for {sorted(set(CORPORA) - set(feats))}; skipped")
            continue
        cells = []
        for held in CORPORA:
            y = feats[held]["y"]
            chosen = inner_layer(feats, held) if view == "inner" else view
            for seed in a.seeds:
                Xtr, ytr, tests, order = split_norm(feats, held, chosen, seed)
                preds = fit_predict(method, Xtr, ytr, [tests[p] for p in PROTOCOLS], seed)
                cells.append({"held": held, "seed": seed, "layers": chosen, **{
                    p: score(y if p == "offline" else y[order], pred) for p, pred in zip(PROTOCOLS, preds, strict=True)}})
        results[name] = {"checkpoint": ckpt, "window": window, "layers": view, "classifier": method, "cells": cells}
        print(row_md(name, results[name]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "benchmarks/whisper_loco.py loco", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seeds": list(a.seeds), "classes": list(CLASSES), "corpora": list(CORPORA)}
    from affectflow.storage import atomic_write_json, atomic_write_text

    atomic_write_json(out / "whisper_loco.json", {"meta": meta, "rows": results})
    atomic_write_text(out / "whisper_loco.md", table_md(results))


def table(a: argparse.Namespace) -> None:
    """One table from several `loco` runs' results.json files (rows run in separate processes)."""
    import json

    from affectflow.storage import atomic_write_json, atomic_write_text

    metas, rows = [], {}
    for f in a.files:
        d = json.loads(Path(f).read_text())
        metas.append(d["meta"])
        rows.update(d["rows"])
    out = Path(a.out)
    atomic_write_json(out / "whisper_loco.json", {"meta": metas, "rows": rows})
    atomic_write_text(out / "whisper_loco.md", table_md(rows))
    print(table_md(rows))


def compare_window(a: argparse.Namespace) -> None:
    """Trimmed (`window: clip`) against padded-to-30 s vectors on the clips extracted both ways:
    cosine per layer, and whether the probe (middle layer, trained on the trimmed vectors of the
    other corpora) gives the same answer and the same accuracy (streamed_pooled statistics, which do
    not depend on the sample)."""
    clip_f = read_features(a.cache, a.checkpoint, "clip")
    pad_f = read_features(a.cache, a.checkpoint, "padded")
    rows, agree, right_clip, right_pad, n = [], 0, 0, 0, 0
    cos_all = []
    for held, pf in pad_f.items():
        cf = clip_f[held]
        idx = {u: i for i, u in enumerate(cf["utt_id"])}
        take = np.array([idx[u] for u in pf["utt_id"]])
        Xc, Xp, y = cf["X"][take], pf["X"], pf["y"]
        cos = (Xc * Xp).sum(-1) / (np.linalg.norm(Xc, axis=-1) * np.linalg.norm(Xp, axis=-1))
        cos_all.append(cos)
        train = {c: v for c, v in clip_f.items() if c != held}
        mid = Xc.shape[1] // 2
        Xtr = np.concatenate([standardise(v["X"][:, mid], v["X"][:, mid]) for v in train.values()])
        ytr = np.concatenate([v["y"] for v in train.values()])
        pooled = np.concatenate([v["X"][:, mid] for v in train.values()])
        pc, pp = fit_predict("logreg", Xtr, ytr, [standardise(Xc[:, mid], pooled), standardise(Xp[:, mid], pooled)], 0)
        agree += int((pc == pp).sum())
        right_clip += int((pc == y).sum())
        right_pad += int((pp == y).sum())
        n += len(y)
        rows.append(f"| {held} | {len(y)} | " + " | ".join(f"{v:.3f}" for v in cos.mean(0)) + " |")
    cos_mean = np.concatenate(cos_all).mean(0)
    text = (f"{n} clips ({a.checkpoint}), both windows. Cosine of trimmed vs padded vectors per layer "
            "(0 = input embedding):\n\n| corpus | clips | " + " | ".join(f"L{i}" for i in range(len(cos_mean)))
            + " |\n|---|--:|" + "--:|" * len(cos_mean) + "\n" + "\n".join(rows)
            + f"\n\nMiddle-layer probe (trained on trimmed vectors of the other corpora, pooled statistics): "
            f"same answer for {agree}/{n} clips; correct {right_clip}/{n} trimmed, {right_pad}/{n} padded.\n")
    print(text)
    from affectflow.storage import atomic_write_text

    atomic_write_text(Path(a.out) / "whisper_window.md", text)


def _ms(v: list[float]) -> str:
    return f"{np.mean(v):.1f} ± {np.std(v):.1f}"


def row_md(name: str, r: dict[str, object]) -> str:
    lines = []
    cells = r["cells"]
    for proto in PROTOCOLS:
        per = [np.mean([c[proto]["uar"] for c in cells if c["held"] == h]) for h in CORPORA]
        seeds_mean = [np.mean([c[proto]["uar"] for c in cells if c["seed"] == s]) for s in {c["seed"] for c in cells}]
        neutral = np.mean([c[proto]["recall"]["neutral"] for c in cells])
        n_coll = sum(c[proto]["collapse"] for c in cells)
        lines.append(f"| {name} | {proto} | " + " | ".join(f"{p:.1f}" for p in per)
                     + f" | **{_ms(seeds_mean)}** | {neutral:.1f} | {n_coll}/{len(cells)} |")
    return "\n".join(lines)


def table_md(results: dict[str, dict[str, object]]) -> str:
    head = ("| row | protocol | " + " | ".join(CORPORA) + " | mean UAR (± std over seeds) | neutral recall | "
            "collapsed cells |\n|---|---|" + "---|" * len(CORPORA) + "---|---|---|\n")
    recall = ["", "Per-class recall (mean over held-out corpora and seeds):", "",
              "| row | protocol | " + " | ".join(CLASSES) + " |", "|---|---|" + "---|" * len(CLASSES)]
    for name, r in results.items():
        for proto in PROTOCOLS:
            rec = [np.mean([c[proto]["recall"][k] for c in r["cells"]]) for k in CLASSES]
            recall.append(f"| {name} | {proto} | " + " | ".join(f"{v:.1f}" for v in rec) + " |")
    return head + "\n".join(row_md(n, r) for n, r in results.items()) + "\n" + "\n".join(recall) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("--checkpoint", default="pkg:whisper-base")
    ex.add_argument("--window", choices=["clip", "padded"], default="clip")
    ex.add_argument("--corpora", nargs="+", default=list(CORPORA))
    ex.add_argument("--sample", type=int, default=0, help="a random sample of this many clips (over all corpora)")
    ex.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    ex.add_argument("--batch-size", type=int, default=8)
    lo = sub.add_parser("loco")
    lo.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    lo.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    lo.add_argument("--out", default=str(Path(__file__).parent / "results" / "generalization"))
    cw = sub.add_parser("compare-window")
    cw.add_argument("--checkpoint", default="pkg:whisper-base")
    cw.add_argument("--out", default=str(Path(__file__).parent / "results" / "generalization"))
    tb = sub.add_parser("table")
    tb.add_argument("files", nargs="+")
    tb.add_argument("--out", default=str(Path(__file__).parent / "results" / "generalization"))
    for p in (ex, lo, cw):
        p.add_argument("--cache", type=Path, default=CACHE)
        p.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args()
    {"extract": extract, "loco": loco, "compare-window": compare_window, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
