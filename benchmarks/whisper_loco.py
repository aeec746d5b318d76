"""Whisper features for the leave-one-corpus-out study, cached once, and the trimmed-vs-padded check.

The LOCO rows themselves run in `affectflow ablate generalization` (studies.generalization
conditions `whisper_*`: the product's `ssl_linear`, the ssl + ComParE fusion, the adversarial rows);
this script only feeds it and measures the window.

    # 1. extract (resumable; nice it, the box is shared): every 4-class clip of the four corpora
    nice -n 10 .venv/bin/python benchmarks/whisper_loco.py extract --checkpoint pkg:whisper-base
    nice -n 10 .venv/bin/python benchmarks/whisper_loco.py extract --checkpoint pkg:whisper-base --window padded --sample 40
    # 2. hand the cached vectors to a study's feature store (checked against a fresh extraction of a sample)
    .venv/bin/python benchmarks/whisper_loco.py seed-store --checkpoint pkg:whisper-base \
        --manifest <study>/ingest/manifest.parquet --store <study>/features
    # 3. trimmed vs padded positions: benchmarks/results/generalization/whisper_window.md
    .venv/bin/python benchmarks/whisper_loco.py compare-window

Features are `affectflow.features.ssl.SslEncoder` vectors (the product's `ssl` kind: every hidden
state, time-averaged), so a cached vector is what `features.ssl.checkpoint: pkg:whisper-base`
computes (stored as fp16; `seed-store` re-extracts a sample and refuses a cache that differs by more
than fp16 rounding). The cache (`--cache`, default ~/.cache/affectflow/whisper_loco) holds one npz
per corpus part and checkpoint; no audio is copied.
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
    cfg = SslConfig(checkpoint=a.checkpoint, window=a.window, batch_size=a.batch_size, layers=[])  # every state
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


def probe_predict(Xtr: np.ndarray, ytr: np.ndarray, tests: list[np.ndarray]) -> list[np.ndarray]:
    """The issue's probe: a logistic regression, C = 0.1."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=0.1, max_iter=2000).fit(Xtr, ytr)
    return [clf.predict(X) for X in tests]


def seed_store(a: argparse.Namespace) -> None:
    """Write the cached vectors of a study's clips into its feature store under the product's `ssl`
    key (so `affectflow ablate generalization` computes no ssl feature), after checking, on a
    sample re-extracted now by the product's encoder, that they are the vectors it computes."""
    import torch

    from affectflow.audio import load
    from affectflow.config import load_params, with_overrides
    from affectflow.contracts.feature_store import catalogue, write_shard
    from affectflow.contracts.manifest import read_manifest
    from affectflow.features.keys import feature_keys
    from affectflow.features.ssl import SslEncoder

    torch.set_num_threads(a.threads)
    params = load_params(a.params, [f"features.ssl.checkpoint={a.checkpoint}", "features.ssl.layers=[]"])  # the cache: every state
    key = feature_keys(with_overrides(params, {"features.kinds": ["ssl"]}))["ssl"]
    man = read_manifest(a.manifest)
    feats = read_features(a.cache, a.checkpoint, "clip")
    cached = {f"{name}/{u}": x for name, c in feats.items() for u, x in zip(c["utt_id"], c["X"], strict=True)}
    rows = man[man["utt_id"].isin(list(cached))]
    missing = sorted(set(man["utt_id"]) - set(cached))
    if missing:
        raise SystemExit(f"{len(missing)} clips of {a.manifest} are not in the cache (e.g. {missing[0]}): extract first")
    sample = rows.groupby("corpus").head(a.check).reset_index(drop=True)
    enc = SslEncoder(params.features.ssl, params.audio.sample_rate)
    fresh = enc([load(p, params.audio.sample_rate) for p in sample["path"]])
    diff = max(float(np.abs(f - cached[u].reshape(-1)).max() / max(np.abs(f).max(), 1e-6))
               for f, u in zip(fresh, sample["utt_id"], strict=True))
    print(f"{len(sample)} clips re-extracted: largest difference to the cache {diff:.2e} of the vector's range "
          "(fp16 storage: ~1e-3)")
    if diff > 5e-3:
        raise SystemExit("the cache does not hold what the product computes now; extract with the study instead")
    have, _ = catalogue(a.store, "ssl", key)
    todo = rows[~rows["sha256"].isin(list(have))].drop_duplicates("sha256")
    for i in range(0, len(todo), 1000):
        part = todo.iloc[i:i + 1000]
        write_shard(a.store, "ssl", key, {h: cached[u].reshape(-1).astype(np.float32)
                                          for u, h in zip(part["utt_id"], part["sha256"], strict=True)})
    print(f"{len(todo)} clips written to {a.store} (ssl, key {key}); {len(have)} were there")


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
        pc, pp = probe_predict(Xtr, ytr, [standardise(Xc[:, mid], pooled), standardise(Xp[:, mid], pooled)])
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("--checkpoint", default="pkg:whisper-base")
    ex.add_argument("--window", choices=["clip", "padded"], default="clip")
    ex.add_argument("--corpora", nargs="+", default=list(CORPORA))
    ex.add_argument("--sample", type=int, default=0, help="a random sample of this many clips (over all corpora)")
    ex.add_argument("--batch-size", type=int, default=8)
    ss = sub.add_parser("seed-store")
    ss.add_argument("--checkpoint", default="pkg:whisper-base")
    ss.add_argument("--params", default="params.yaml")
    ss.add_argument("--manifest", type=Path, required=True, help="the study's ingest/manifest.parquet")
    ss.add_argument("--store", type=Path, required=True, help="the study's features/ folder")
    ss.add_argument("--check", type=int, default=3, help="clips per corpus re-extracted to check the cache")
    cw = sub.add_parser("compare-window")
    cw.add_argument("--checkpoint", default="pkg:whisper-base")
    cw.add_argument("--out", default=str(Path(__file__).parent / "results" / "generalization"))
    for p in (ex, ss, cw):
        p.add_argument("--cache", type=Path, default=CACHE)
        p.add_argument("--data", type=Path, default=DATA)
        p.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 2)))
    a = ap.parse_args()
    {"extract": extract, "seed-store": seed_store, "compare-window": compare_window}[a.cmd](a)


if __name__ == "__main__":
    main()
