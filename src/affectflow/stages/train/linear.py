"""Training, closed form: `train.model: ssl_linear` is a multinomial logistic regression on one
encoder layer, fitted by scikit-learn in the driver (no epochs, no Ray workers, no checkpoints);
with dimensional targets (`train.dimension_weight` > 0, issue 29) its dimensional head is a ridge
regression on the same layer (`fit_dimensions`), so model.json's `dimensions` holds as for any
recognizer.

The layer (`train.ssl_linear.layer: auto`) is chosen on the training data only, as the study
chooses everything (issue 27): with two or more training corpora, each is held out in turn, a
regression per layer is fitted on the others (each standardised by its own statistics) and scored
on the held-out one *streamed*, as a deployment meets it (clip by clip, shuffled, standardised by
the deployment statistics of the clips before it: `serving.deployment.DeploymentStats`); the layer
with the best mean UAR wins. One corpus: its validation speakers decide; none: the middle layer.
Then, on that layer and by the same rule, the regression's C from `train.ssl_linear.c_grid`
(`train.ssl_linear.c` when the grid is empty or there is only one training corpus).
The outcome has the epoch loop's shape (`loop.train_loop_per_worker`), so the train stage writes the
model folder, calibration, curves and MLflow records as for any recognizer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from affectflow.metrics import confusion, uar_cm, wa_cm
from affectflow.models import build_model
from affectflow.models import dimensions as dimension_head
from affectflow.models.data import NormStats, compute_stats
from affectflow.models.ssl_linear import SslLinear, layer_index
from affectflow.serving.deployment import DeploymentStats
from affectflow.stages.train.loop import WorkerData
from affectflow.stages.train.plan import WorkerConfig
from affectflow.stages.train.shared import worker_inputs

log = logging.getLogger(__name__)

STREAM_SALT = 27
"""The inner held-out corpus arrives in the order `default_rng([seed, 27])` draws (the study's)."""


def logistic(c: float, max_iter: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter)


def layer_slice(X: np.ndarray, layer: int, n_layers: int) -> np.ndarray:
    """(N, n_layers * D) -> (N, D): one layer's columns."""
    width = X.shape[1] // n_layers
    return X[:, layer * width:(layer + 1) * width]


def uar_of(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    return float(uar_cm(confusion(y, pred, n_classes)))


def streamed(raw: np.ndarray, prior: NormStats, min_clips: float, window: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `raw` in a seeded shuffled order, each standardised by the deployment statistics
    of the rows before it: (the standardised rows in arrival order, the order)."""
    order = np.random.default_rng([seed, STREAM_SALT]).permutation(len(raw))
    stats = DeploymentStats(prior=prior, min_clips=min_clips, window=window)  # type: ignore[arg-type]
    return np.stack(stats.normalise([raw[i] for i in order])).astype(np.float32), order


def deploys_running(cfg: WorkerConfig) -> bool:
    """Whether the model standardises unknown audio by its deployment's statistics (plan's rule)."""
    tc = cfg.train
    return tc.deploy_normalize == "running" or (tc.deploy_normalize == "auto" and tc.normalize == "corpus")


def inner_corpus_scores(cfg: WorkerConfig, data: WorkerData, raw: list[np.ndarray], n_layers: int,
                        n_classes: int, candidates: list[tuple[int, float]]) -> dict[tuple[int, float], float]:
    """Mean streamed UAR per (layer, C) candidate over the training corpora held out in turn (real rows only)."""
    tc, lin = cfg.train, cfg.train.ssl_linear
    names = sorted(set(cfg.train_corpora))
    X = np.stack(data.x)
    corpora = np.asarray(cfg.train_corpora)
    raw_X = np.stack(raw)
    scores: dict[tuple[int, float], list[float]] = {k: [] for k in candidates}
    for inner, name in enumerate(names):
        fit_rows = (data.group >= 0) & (data.group != inner)
        test = corpora == name
        prior = compute_stats(list(raw_X[~test]), "global")
        Z, order = streamed(raw_X[test], prior, tc.deploy_min_clips if deploys_running(cfg) else np.inf,
                            tc.deploy_window, tc.seed)
        y_test = np.asarray(cfg.train_y)[test][order]
        for layer, c in candidates:
            clf = logistic(c, lin.max_iter).fit(layer_slice(X[fit_rows], layer, n_layers), data.y[fit_rows])
            scores[(layer, c)].append(uar_of(y_test, clf.predict(layer_slice(Z, layer, n_layers)), n_classes))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def validation_scores(data: WorkerData, n_layers: int, n_classes: int, c: float, max_iter: int) -> dict[int, float]:
    """UAR per layer on the validation speakers (one training corpus)."""
    X, V = np.stack(data.x), np.stack(data.vx)
    return {layer: uar_of(data.vy, logistic(c, max_iter).fit(layer_slice(X, layer, n_layers), data.y)
                          .predict(layer_slice(V, layer, n_layers)), n_classes) for layer in range(n_layers)}


def choose_layer(cfg: WorkerConfig, data: WorkerData, n_layers: int, n_classes: int) -> tuple[int, dict[str, Any]]:
    """The stored layer to fit (its position in the vector: `train.ssl_linear.layer`, or chosen when
    auto) and how it was chosen; the record names the encoder's hidden states (`features.ssl.layers`
    may keep only some: `states`)."""
    lin = cfg.train.ssl_linear
    kept = list(cfg.arch_config.get("states") or range(n_layers))
    total = int(cfg.arch_config.get("encoder_states") or n_layers)
    middle = layer_index("middle", n_layers, kept, total) if total // 2 in kept else n_layers // 2
    if lin.layer != "auto":
        pos = layer_index(lin.layer, n_layers, kept, total)
        return pos, {"rule": "set", "layer": kept[pos]}
    if len(set(cfg.train_corpora)) >= 2:
        by_pair = inner_corpus_scores(cfg, data, worker_inputs(cfg).train, n_layers, n_classes,
                                      [(k, lin.c) for k in range(n_layers)])
        scores = {k: v for (k, _), v in by_pair.items()}
        rule = "leave-one-training-corpus-out, streamed UAR"
    elif data.vx:
        scores = validation_scores(data, n_layers, n_classes, lin.c, lin.max_iter)
        rule = "validation speakers, UAR"
    else:
        return middle, {"rule": "middle layer (one corpus, no validation speakers)", "layer": kept[middle]}
    best = max(scores, key=lambda k: (scores[k], -abs(k - middle)))  # ties: the layer nearer the middle
    log.info("ssl_linear: hidden state %d chosen by %s (%s)", kept[best], rule,
             ", ".join(f"{kept[k]}: {100 * v:.1f}" for k, v in scores.items()))
    return best, {"rule": rule, "layer": kept[best], "scores": {str(kept[k]): round(v, 4) for k, v in scores.items()}}


def choose_c(cfg: WorkerConfig, data: WorkerData, layer: int, n_layers: int, n_classes: int) -> tuple[float, dict[str, Any]]:
    """The regularisation strength for the chosen layer: `train.ssl_linear.c`, or, with a
    `c_grid` and two or more training corpora, the grid's best by the layer choice's own rule
    (leave-one-training-corpus-out, streamed UAR); ties go to the stronger regularisation."""
    lin = cfg.train.ssl_linear
    if not lin.c_grid or len(set(cfg.train_corpora)) < 2:
        return lin.c, {"c": lin.c, "c_rule": "set"}
    by_pair = inner_corpus_scores(cfg, data, worker_inputs(cfg).train, n_layers, n_classes,
                                  [(layer, c) for c in lin.c_grid])
    scores = {c: v for (_, c), v in by_pair.items()}
    best = max(scores, key=lambda c: (scores[c], -c))
    log.info("ssl_linear: C = %g chosen on the training corpora (%s)", best,
             ", ".join(f"{c:g}: {100 * v:.1f}" for c, v in scores.items()))
    return best, {"c": best, "c_rule": "leave-one-training-corpus-out, streamed UAR",
                  "c_scores": {f"{c:g}": round(v, 4) for c, v in scores.items()}}


def fit_dimensions(model: SslLinear, X: np.ndarray, dims: np.ndarray, c: float) -> None:
    """The dimensional head (`models.dimensions`, tanh of a linear map) in closed form, on the same
    layer as the class head: a ridge regression (alpha = 1 / the class head's C) per dimension
    onto artanh of its targets, over the rows that have one. A dimension with fewer than
    `dimensions.MIN_ROWS` targets gets a zero map (tanh(0) = 0, the scale's centre)."""
    import torch
    from sklearn.linear_model import Ridge

    head = dimension_head.attach(model, dims.shape[1]).dimension_head.linear
    weight, bias = np.zeros((dims.shape[1], X.shape[1]), np.float32), np.zeros(dims.shape[1], np.float32)
    for j in range(dims.shape[1]):
        ok = ~np.isnan(dims[:, j])
        if ok.sum() >= dimension_head.MIN_ROWS:
            reg = Ridge(alpha=1.0 / c).fit(X[ok], np.arctanh(np.clip(dims[ok, j], -0.999, 0.999)))
            weight[j], bias[j] = reg.coef_, reg.intercept_
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))


def dimension_scores(model: SslLinear, V: np.ndarray, vdims: np.ndarray, names: list[str]) -> dict[str, float]:
    """Validation CCC per dimension with enough targets (the epoch loop's `val_ccc_<name>`)."""
    import torch

    with torch.no_grad():
        pred = dimension_head.outputs(model, torch.from_numpy(V.reshape(len(V), -1).astype(np.float32)))[1]
    out = {}
    for j, name in enumerate(names):
        ok = ~np.isnan(vdims[:, j])
        if ok.sum() >= dimension_head.MIN_ROWS and pred is not None:
            out[f"val_ccc_{name}"] = float(dimension_head.ccc(pred[torch.from_numpy(ok), j], torch.from_numpy(vdims[ok, j])))
    return out


def fit_linear(cfg: WorkerConfig) -> dict[str, Any]:
    """The regression on the chosen layer, over every training row (synthetic rows weighted by
    `train.synthetic_weight`); the outcome the train stage expects, plus the resolved
    `arch_config` (the chosen layer) and `layer_choice`. numpy / scikit-learn's BLAS gets
    `train.threads` threads, as torch does: the regressions' small products do not pay for more,
    and on a busy CPU two spinning BLAS threads cost ~20x the CPU time of one (benchmarks/RESULTS.md,
    "The default decision")."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(cfg.train.threads or None):
        return _fit_linear(cfg)


def _fit_linear(cfg: WorkerConfig) -> dict[str, Any]:
    n_classes, n_layers = len(cfg.classes), int(cfg.arch_config["n_layers"])
    if n_layers < 1:
        raise ValueError("ssl_linear: the features carry no encoder layers (features.ssl)")
    data = WorkerData(cfg)
    layer, choice = choose_layer(cfg, data, n_layers, n_classes)
    c, c_choice = choose_c(cfg, data, layer, n_layers, n_classes)
    choice |= c_choice
    lin = cfg.train.ssl_linear
    X = layer_slice(np.stack(data.x), layer, n_layers)
    clf = logistic(c, lin.max_iter).fit(X, data.y, sample_weight=data.weight)
    arch_config = {**cfg.arch_config, "layer": choice["layer"]}  # the encoder's hidden-state index
    model = build_model(cfg.arch, arch_config, cfg.input_dim, n_classes)
    if not isinstance(model, SslLinear):
        raise TypeError(f"train.model {cfg.arch}: closed-form fitting needs an SslLinear, got {type(model).__name__}")
    model.set_head(clf.coef_, clf.intercept_)
    if cfg.dimension_names and data.dims is not None:  # issue 29: the dimensional head, closed form too
        fit_dimensions(model, X, data.dims, c)
    train_p = clf.predict_proba(X)
    row: dict[str, Any] = {"epoch": 0, "train_loss": float(-np.log(np.maximum(train_p[np.arange(len(X)), data.y], 1e-12))
                                                           .mean()),
                           "train_acc": float((train_p.argmax(1) == data.y).mean())}
    if data.vx:
        val_p = clf.predict_proba(layer_slice(np.stack(data.vx), layer, n_layers))
        cm = confusion(data.vy, val_p.argmax(1), n_classes)
        row["val_loss"] = float(-np.log(np.maximum(val_p[np.arange(len(data.vy)), data.vy], 1e-12)).mean())
    else:
        cm, row["val_loss"] = np.zeros((n_classes, n_classes), np.int64), float("nan")
    row |= {"val_uar": float(uar_cm(cm)), "val_wa": float(wa_cm(cm))}
    if cfg.dimension_names and data.vx and data.vdims is not None:
        row |= dimension_scores(model, np.stack(data.vx), data.vdims, cfg.dimension_names)
    return {"history": [row], "best_state": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
            "best_epoch": 0, "best_uar": row["val_uar"], "stopped_early": False, "device": "cpu",
            "world_size": 1, "arch_config": arch_config, "layer_choice": choice}


CLOSED_FORM = {"ssl_linear": fit_linear}
"""Architectures fitted in closed form in the driver instead of the epoch loop (`train.model`)."""


def closed_form(arch: str) -> Any:
    """The closed-form fitter of `arch`, or None (trained by the epoch loop)."""
    return CLOSED_FORM.get(arch)


__all__ = ["CLOSED_FORM", "closed_form", "fit_linear"]
