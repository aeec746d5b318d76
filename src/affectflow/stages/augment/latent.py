"""Latent-feature augmentation: new-style samples in a trained recognizer's embedding space.

The adversarial latent-feature idea (AEG-CD) applied to new speakers and recording conditions: the
recognizer's encoder maps every real training clip to the embedding its head reads; the generator
of `augment.*` (style-conditioned with `augment.style: speaker`) learns those embeddings per class
and speaker, samples embeddings of styles between training speakers of different corpora, the
same three-criterion filter (+ style novelty) keeps the plausible ones, and the head — a linear
layer, cheap on a CPU — is retrained on real + kept synthetic embeddings. The encoder is untouched,
so the result is a model folder of the same architecture that predict and serving load as is.

`augment.latent.ratio: 0` retrains the head on the real embeddings only (same schedule): the
control that separates "more head training" from "synthetic data".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from affectflow.config import LatentConfig, Params
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.contracts.model_folder import write_model_folder
from affectflow.models.data import normalize
from affectflow.runtime.device import resolve_device
from affectflow.serving.recognizer import Recognizer, load_model_dir, predict_embeddings
from affectflow.stages.augment.data import RealSet, training_rows
from affectflow.stages.augment.report import write_report
from affectflow.stages.augment.stage import Synthesis, build_report, synthesize, write_plots
from affectflow.storage import atomic_dir

EMBED_BATCH = 256
"""Clips per encoder forward pass when embedding the training set."""


class LatentError(ValueError):
    """The model or the manifest cannot feed latent augmentation; the message names which and why."""


@dataclass
class LatentResult:
    out_dir: Path
    model_dir: Path
    report_json: Path
    summary: dict[str, Any] = field(default_factory=dict)


def embedding_set(rec: Recognizer, df: pd.DataFrame, features_dir: str | Path, source: str) -> RealSet:
    """The model's training clips (training split, its classes, its training speakers when recorded)
    as embeddings, each standardised with its corpus's training statistics as in training."""
    classes = rec.classes
    rows = training_rows(df, classes)
    speakers = rec.meta.train.train_speakers
    if speakers:
        rows = rows[rows["speaker"].astype(str).isin(speakers)]
    if rows.empty:
        raise LatentError(f"{source}: no training-split rows of the model's training speakers with an emotion in "
                          f"its classes {classes} (fields 'split', 'speaker', 'emotion')")
    ids = rows["utt_id"].tolist()
    corpora = rows["corpus"].astype(str).tolist() if "corpus" in rows.columns else [""] * len(rows)
    arrays = FeatureSet(features_dir).load(rec.feature, ids)
    normed = [normalize(a, rec.stats_for(c) or rec.stats) for a, c in zip(arrays, corpora, strict=True)]
    E = predict_embeddings(rec.model, normed, rec.device, EMBED_BATCH).numpy().astype(np.float32)
    y = np.array(rows["emotion"].map({c: i for i, c in enumerate(classes)}), dtype=np.int64)
    return RealSet(E, y, list(classes), "embedding", np.asarray(ids), np.array(rows["speaker"], dtype=str),
                   np.asarray(corpora, dtype=str))


def head_rows(kept: np.ndarray, y: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Indices of at most `budget` kept samples, spread evenly over the classes (a class with fewer
    kept samples gives all of them and leaves its share to the others)."""
    pool = np.flatnonzero(kept)
    if budget >= len(pool):
        return pool
    rng = np.random.default_rng([seed, 31])
    by_class = {c: rng.permutation(pool[y[pool] == c]) for c in np.unique(y[pool])}
    take = dict.fromkeys(by_class, 0)
    left = budget
    while left > 0:
        open_ = [c for c in by_class if take[c] < len(by_class[c])]
        share = max(1, left // len(open_))
        for c in open_:
            n = min(share, len(by_class[c]) - take[c], left)
            take[c] += n
            left -= n
            if left == 0:
                break
    return np.sort(np.concatenate([by_class[c][: take[c]] for c in by_class]))


def retrain_head(head: nn.Linear, E: np.ndarray, y: np.ndarray, n_classes: int, lc: LatentConfig,
                 seed: int) -> tuple[nn.Linear, list[float]]:
    """A head of `head`'s shape — fresh (`lc.reinit`) or a copy of it — trained on (E, y) with
    class-balanced cross-entropy; (head, mean loss per epoch)."""
    torch.manual_seed(seed)
    new = nn.Linear(head.in_features, head.out_features)
    if not lc.reinit:
        new.load_state_dict(head.state_dict())
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    opt = torch.optim.AdamW(new.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
    X, Y = torch.from_numpy(np.ascontiguousarray(E, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    rng = np.random.default_rng([seed, 37])
    losses = []
    for _ in range(lc.epochs):
        order = rng.permutation(len(Y))
        total = 0.0
        for start in range(0, len(order), lc.batch_size):
            idx = torch.from_numpy(order[start : start + lc.batch_size])
            loss = loss_fn(new(X[idx]), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / max(len(Y), 1))
    return new, losses


def augment_latent(params: Params, model_dir: str | Path, manifest: str | Path | pd.DataFrame,
                   features_dir: str | Path, out_dir: str | Path) -> LatentResult:
    """Embed the model's training clips, synthesize and filter embeddings (`augment.*`), retrain the
    head on real + kept synthetic ones (`augment.latent.*`); writes `<out>/model/` (a model folder),
    report.json / report.md (per class real / kept / rejected, style distances, head training) and
    the augmentation plots, as one folder, atomically."""
    cfg, lc = params.augment, params.augment.latent
    out_dir = Path(out_dir)
    source = str(manifest) if not isinstance(manifest, pd.DataFrame) else "manifest"
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    rec = load_model_dir(model_dir)
    head = getattr(rec.model, "head", None)
    if not isinstance(head, nn.Linear) or not hasattr(rec.model, "encoder"):
        raise LatentError(f"{model_dir}: arch {rec.meta.arch} has no encoder + linear head to retrain")
    real = embedding_set(rec, df, features_dir, source)
    syn: Synthesis = synthesize(cfg, real, resolve_device(cfg.device, "augment.device"))
    rows = head_rows(syn.kept, syn.gen.y, round(lc.ratio * len(real.y)), cfg.seed)
    E = np.concatenate([real.X, syn.X_syn[rows]])
    y = np.concatenate([real.y, syn.gen.y[rows]])
    new_head, losses = retrain_head(head, E, y, len(rec.classes), lc, cfg.seed)
    rec.model.head = new_head
    facts = {"generator": cfg.generator, "style": cfg.style, "filters": list(cfg.filters), "ratio": lc.ratio,
             "n_real": len(real.y), "n_synthetic": len(rows), "head_epochs": lc.epochs, "reinit": lc.reinit,
             "base_model": str(model_dir)}
    meta = rec.meta.model_copy(deep=True)
    meta.train = meta.train.model_copy(update={"latent_augmentation": facts})
    meta.calibration = None  # the base model's temperature was fitted to its old head, not this one
    report = build_report(params, df, features_dir, syn, str(rec.device))
    report["head"] = {**facts, "loss_first": losses[0], "loss_last": losses[-1]}
    with atomic_dir(out_dir) as tmp:
        model_out = write_model_folder(tmp / "model", rec.model, meta)
        write_plots(tmp, cfg, syn)
        write_report(tmp, report)
    summary = {"generated": len(syn.gen.y), "kept": int(syn.kept.sum()), "head_synthetic": len(rows),
               "head_real": len(real.y), "head_loss_last": round(losses[-1], 4)}
    return LatentResult(out_dir, out_dir / model_out.name, out_dir / "report.json", summary)
