"""Rows of `affectflow ablate generalization` on ONE layer of the ssl features, outside the train
stage (like the SVM reference): the Whisper + ComParE fusion, and the adversarial rows on the
Whisper front-end (issue 27).

Every row reads the same vectors the product's `ssl` kind stores, layer `train.ssl_linear.layer`
(an index or `middle`), each training corpus standardised by its own statistics, the held-out
corpus by its own (offline) or by the deployment statistics of the clips before each (streamed,
`generalization.streamed_matrix`), exactly as the product rows are scored.

- `ssl_compare_fusion`: that layer and the ComParE functionals, each standardised, the ComParE block
  scaled by sqrt(layer width / its width) so both blocks carry the same total variance (6,373
  ComParE dimensions would drown 512 Whisper ones under one L2 penalty), concatenated; a
  multinomial logistic regression (`train.ssl_linear.c`).
- `ssl_egemaps_fusion`: the same with the 88 eGeMAPS functionals (the block scaled up by the same rule).
- `ssl_logistic`: that layer alone, the same regression: the probe's recipe on every training clip
  (the train stage's `ssl_linear` keeps validation speakers out), the baseline of the linear rows.
- `ssl_layer_pair` / `ssl_layer_pair_mean`: that layer and the next one (2+3 for `layer: 2`),
  concatenated / averaged, then the same logistic regression: whether the best single layer leaves
  information in its neighbour (`LINEAR_ROWS`, the table of these linear rows).
- `ssl_linear_mlp_ensemble`: the logistic regression on that layer and `ssl_mlp`'s network, their
  class probabilities averaged (two heads that err differently).
- `ssl_mlp`: the product's MLP recognizer (`train.mlp`) on that layer, class-weighted
  cross-entropy, `train.epochs` x AdamW (`train.lr`, `train.weight_decay`, `train.batch_size`):
  the baseline the adversarial rows are counted against (the same network, the same budget).
- `ssl_dann`: + a domain head over the training corpora AND the held-out corpus (its clips
  unlabelled, in the domain loss only) behind a gradient reversal (multi-source DANN).
- `ssl_corpus_adversarial`: + a domain head over the training corpora only (domain generalisation;
  no target audio).
- `ssl_speaker_adversarial`: + a head over the training speakers (no target audio).
The adversaries are `models.dann.Dann`'s heads, with `pretrain.*`'s settings (`lambda_max`,
`lambda_gamma`, `domain_hidden`, `head_dropout`, `adversary_lr_scale`, `domain_weight`,
`speaker_weight`, `grad_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.studies.generalization_scores import PROTOCOLS, streamed_matrix

ADVERSARY: dict[str, str | None] = {
    "ssl_mlp": None,
    "ssl_dann": "domain_with_target",
    "ssl_corpus_adversarial": "domain",
    "ssl_speaker_adversarial": "speaker",
}
"""Network rows (`StudyCondition.method`) → what the gradient-reversed head predicts (None: no
adversary); `studies.generalization.METHODS` registers each with `adversarial_cell`."""


def layer_matrix(params: Params, features: Path, rows: pd.DataFrame, offset: int = 0) -> np.ndarray:
    """Raw (N, D) vectors of one layer (`train.ssl_linear.layer`, + `offset`) of the stored ssl features."""
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.features.ssl import kept_states
    from affectflow.models.ssl_linear import hidden_state, layer_index

    layer = params.train.ssl_linear.layer
    if layer == "auto":
        raise ValueError("train.ssl_linear.layer: auto is chosen inside the train stage; rows outside it "
                         "(studies/ssl_rows.py) need an index or middle")
    states, total = kept_states(params.features.ssl)
    n = len(states)
    state = hidden_state(layer, total) + offset  # the encoder's hidden state; the next one for offset 1
    if state >= total:
        raise ValueError(f"train.ssl_linear.layer: {layer} + {offset} is past the encoder's {total} hidden states")
    k = layer_index(state, n, states, total)
    X = FeatureSet(features).matrix("ssl", rows["utt_id"].tolist()).astype(np.float64)
    width = X.shape[1] // n
    return X[:, k * width:(k + 1) * width]


def per_corpus(X: np.ndarray, corpora: np.ndarray) -> np.ndarray:
    """Each corpus z-scored by its own clips' statistics (label-free)."""
    out = np.empty_like(X)
    for c in np.unique(corpora):
        m = corpora == c
        out[m] = (X[m] - X[m].mean(0)) / np.maximum(X[m].std(0), 1e-8)
    return out


def held_out_views(params: Params, X_train_raw: np.ndarray, X_test_raw: np.ndarray) -> dict[str, np.ndarray]:
    """The held-out rows as each protocol standardises them (manifest order): offline by the corpus's
    own statistics; streamed by the deployment statistics (prior: the pooled training statistics)."""
    from affectflow.models.data import compute_stats

    prior = compute_stats(list(X_train_raw), "global")
    views = {"offline": per_corpus(X_test_raw, np.zeros(len(X_test_raw)))}
    return views | streamed_matrix(X_test_raw, prior, params, params.train.seed)


def split(df: pd.DataFrame, train_corpora: list[str], held: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from affectflow.studies.generalization import training_manifest

    man = training_manifest(df, train_corpora, held)
    return man[man["role"] == "source"], man[man["corpus"] == held]


def predictions(test_rows: pd.DataFrame, classes: list[str], predicted: dict[str, np.ndarray]) -> pd.DataFrame:
    pred = test_rows[["utt_id", "corpus", "speaker", "emotion"]].copy()
    for protocol, idx in predicted.items():
        pred[PROTOCOLS[protocol]] = np.asarray(classes)[idx]
    return pred


@dataclass(frozen=True)
class LinearRow:
    """A logistic-regression row: which encoder layers (from `train.ssl_linear.layer`: that one and
    the next `span - 1`), averaged or side by side, and an openSMILE kind fused beside them."""

    span: int = 1
    mean: bool = False
    """The layers averaged (one layer's width) instead of side by side."""
    fused: str | None = None
    """A stored functionals kind (compare, egemaps) concatenated after the layers, block-scaled."""


LINEAR_ROWS: dict[str, LinearRow] = {
    "ssl_logistic": LinearRow(),
    "ssl_compare_fusion": LinearRow(fused="compare"),
    "ssl_egemaps_fusion": LinearRow(fused="egemaps"),
    "ssl_layer_pair": LinearRow(span=2),
    "ssl_layer_pair_mean": LinearRow(span=2, mean=True),
}
"""Linear rows (`StudyCondition.method`) → their inputs; `studies.generalization.METHODS` registers
each with `linear_cell`."""


def row_matrix(row: LinearRow, params: Params, features: Path, rows: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Raw inputs of a linear row and the width of its encoder block (the rest is the fused kind)."""
    from affectflow.contracts.feature_store import FeatureSet

    layers = [layer_matrix(params, features, rows, offset) for offset in range(row.span)]
    enc = np.mean(layers, axis=0) if row.mean else np.concatenate(layers, 1)
    if row.fused is None:
        return enc, enc.shape[1]
    other = FeatureSet(features).matrix(row.fused, rows["utt_id"].tolist()).astype(np.float64)
    return np.concatenate([enc, other], 1), enc.shape[1]


def block_scale(width: int, total: int) -> np.ndarray:
    """Per-column weights giving the fused block (columns `width:`) the encoder block's total
    variance once both are standardised (ones when nothing is fused)."""
    rest = total - width
    return np.concatenate([np.ones(width), np.full(rest, np.sqrt(width / rest) if rest else 1.0)])


def logistic(params: Params, X: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    lin = params.train.ssl_linear
    return LogisticRegression(C=lin.c, max_iter=lin.max_iter).fit(X, y)


def linear_cell(row: LinearRow, params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str],
                held: str) -> pd.DataFrame:
    """A `LINEAR_ROWS` row: its inputs standardised per corpus, block-scaled; a logistic regression."""
    classes = list(params.studies.generalization.classes)
    train_rows, test_rows = split(df, train_corpora, held)
    (Xtr_raw, width), (Xte_raw, _) = (row_matrix(row, params, features, r) for r in (train_rows, test_rows))
    scale = block_scale(width, Xtr_raw.shape[1])
    y = train_rows["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    clf = logistic(params, per_corpus(Xtr_raw, train_rows["corpus"].to_numpy()) * scale, y)
    views = held_out_views(params, Xtr_raw, Xte_raw)
    return predictions(test_rows, classes, {p: clf.predict(Z * scale) for p, Z in views.items()})


def ensemble_cell(params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str],
                  held: str) -> pd.DataFrame:
    """The logistic regression and the MLP (`ssl_mlp`'s network and budget) on one layer, their
    class probabilities averaged."""
    import torch

    classes = list(params.studies.generalization.classes)
    train_rows, test_rows = split(df, train_corpora, held)
    Xtr_raw, Xte_raw = layer_matrix(params, features, train_rows), layer_matrix(params, features, test_rows)
    Xtr = per_corpus(Xtr_raw, train_rows["corpus"].to_numpy())
    y = train_rows["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    clf = logistic(params, Xtr, y)
    net = train_network(params, Xtr, y, np.zeros(len(y), np.int64), 0, np.zeros((0, Xtr.shape[1])),
                        len(classes), 0.0)

    def both(Z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            p_net = torch.softmax(net(torch.from_numpy(Z.astype(np.float32))).emotion, 1).numpy()
        return (clf.predict_proba(Z) + p_net).argmax(1)

    return predictions(test_rows, classes, {p: both(Z) for p, Z in held_out_views(params, Xtr_raw, Xte_raw).items()})


def adversarial_cell(kind: str | None, params: Params, df: pd.DataFrame, features: Path, train_corpora: list[str],
                     held: str, cell_dir: Path | None = None) -> pd.DataFrame:
    """The MLP on the ssl layer, with the adversary `kind` (an `ADVERSARY` value: None, speaker,
    domain, domain_with_target)."""
    classes = list(params.studies.generalization.classes)
    train_rows, test_rows = split(df, train_corpora, held)
    Xtr_raw, Xte_raw = layer_matrix(params, features, train_rows), layer_matrix(params, features, test_rows)
    Xtr = per_corpus(Xtr_raw, train_rows["corpus"].to_numpy())
    y = train_rows["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    extra = np.zeros((0, Xtr.shape[1]))
    if kind == "speaker":
        names = sorted(set(train_rows["speaker"]))
        adv = train_rows["speaker"].map({s: i for i, s in enumerate(names)}).to_numpy()
    elif kind in ("domain", "domain_with_target"):
        names = sorted(train_corpora) + ([held] if kind == "domain_with_target" else [])
        adv = train_rows["corpus"].map({s: i for i, s in enumerate(names)}).to_numpy()
        if kind == "domain_with_target":  # the held-out corpus's audio, unlabelled, standardised by itself
            extra = per_corpus(Xte_raw, np.zeros(len(Xte_raw)))
            adv = np.concatenate([adv, np.full(len(extra), names.index(held))])
    else:
        names, adv = [], np.zeros(len(y), np.int64)
    pc = params.pretrain
    model = train_network(params, Xtr, y, adv, len(names), extra, len(classes),
                          pc.speaker_weight if kind == "speaker" else pc.domain_weight)
    views = held_out_views(params, Xtr_raw, Xte_raw)
    return predictions(test_rows, classes, {p: predict(model, Z) for p, Z in views.items()})


def train_network(params: Params, X: np.ndarray, y: np.ndarray, adv: np.ndarray, n_adv: int, extra: np.ndarray,
                  n_classes: int, adv_weight: float) -> Any:
    """The MLP recognizer (+ a gradient-reversed head over `n_adv` labels when n_adv >= 2): labelled
    rows `X`, `y`; `adv` labels every labelled row and then every `extra` (unlabelled) row."""
    import torch
    from torch import nn

    from affectflow.config import MlpConfig
    from affectflow.models.dann import Dann, grl_lambda
    from affectflow.models.recognizer import EgemapsMlp

    tc, pc = params.train, params.pretrain
    if tc.threads:
        torch.set_num_threads(tc.threads)  # as the train stage's workers: 1 is fastest on a shared CPU
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng([tc.seed, 5])
    rec = EgemapsMlp(X.shape[1], n_classes, MlpConfig.model_validate(tc.mlp.model_dump()))
    model = Dann(rec, n_adv if n_adv >= 2 else 0, 0, pc.domain_hidden, pc.head_dropout)
    heads = list(model.domain_head.parameters()) if model.domain_head is not None else []
    opt = torch.optim.AdamW([{"params": model.recognizer.parameters()},
                             {"params": heads, "lr": tc.lr * pc.adversary_lr_scale}], lr=tc.lr,
                            weight_decay=tc.weight_decay)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    emotion_loss = nn.CrossEntropyLoss(weight=torch.tensor(len(y) / (n_classes * np.maximum(counts, 1)),
                                                            dtype=torch.float32))
    Xt, yt = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y)
    Et = torch.from_numpy(extra.astype(np.float32))
    at = torch.from_numpy(adv.astype(np.int64))
    bs = tc.batch_size
    steps = max(1, len(X) // bs)
    total = tc.epochs * steps
    for epoch in range(tc.epochs):
        model.train()
        order = rng.permutation(len(X))
        for i, b in enumerate(np.array_split(order, steps)):
            model.set_lambda(grl_lambda((epoch * steps + i) / total, pc.lambda_max, pc.lambda_gamma))
            xb, ab = Xt[b], at[b]
            if len(Et):
                e = rng.integers(0, len(Et), len(b))
                xb, ab = torch.cat([xb, Et[e]]), torch.cat([ab, at[len(X) + e]])
            out = model(xb)
            loss = emotion_loss(out.emotion[:len(b)], yt[b])
            if out.domain is not None:
                loss = loss + adv_weight * nn.functional.cross_entropy(out.domain, ab)
            opt.zero_grad()
            loss.backward()
            if pc.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip)
            opt.step()
    return model.eval()


def predict(model: Any, Z: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(Z.astype(np.float32))).emotion.argmax(1).numpy()
