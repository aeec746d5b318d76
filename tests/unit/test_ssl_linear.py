"""`train.model: ssl_linear`: one encoder layer of the ssl features and a multinomial logistic
regression, inside the recognizer contract. The layer `auto` picks is chosen on the training corpora
only (each held out in turn, scored streamed); the head's softmax is the regression's probabilities;
the whole path (features of a tiny random encoder, train, evaluate, predict) runs unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_ssl import _params, save_tiny

from affectflow.config import Params, TrainConfig
from affectflow.models import arch_config, build_model
from affectflow.models.data import compute_stats
from affectflow.stages.train import linear, loop
from affectflow.stages.train.plan import WorkerConfig
from affectflow.stages.train.shared import WorkerInputs

N_LAYERS, WIDTH, CLASSES = 4, 8, ["angry", "happy", "neutral", "sad"]
GOOD = 1  # the layer whose emotion pattern is the same in every corpus (not the middle one, 2)


def clips(corpus: int, n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, N_LAYERS * WIDTH) vectors of one corpus: layer GOOD carries a class pattern shared by every
    corpus; layer 0 one that only this corpus has (it fits the training corpora, transfers nowhere);
    every layer gets the corpus's own offset and scale (its recording condition)."""
    shared = np.eye(len(CLASSES), WIDTH) * 3
    own = np.random.default_rng(100 + corpus).normal(0, 3, (len(CLASSES), WIDTH))
    y = np.repeat(np.arange(len(CLASSES)), n_per_class)
    X = rng.normal(0, 1, (len(y), N_LAYERS, WIDTH))
    X[:, GOOD] += shared[y]
    X[:, 0] += own[y] * 1.5
    X = X * (1 + corpus) + 5 * corpus
    return X.reshape(len(y), -1).astype(np.float32), y


def worker(monkeypatch: pytest.MonkeyPatch, corpora: int, layer: int | str = "auto", val: int = 0,
           c_grid: list[float] | None = None) -> WorkerConfig:
    """A WorkerConfig over generated vectors (the inputs patched in where the workers read them)."""
    rng = np.random.default_rng(0)
    xs, ys, names = [], [], []
    for c in range(corpora):
        X, y = clips(c, 30, rng)
        xs += list(X)
        ys += y.tolist()
        names += [f"c{c}"] * len(y)
    vX, vy = clips(0, val, rng) if val else (np.zeros((0, N_LAYERS * WIDTH), np.float32), np.zeros(0, int))
    per = {n: compute_stats([x for x, k in zip(xs, names, strict=True) if k == n], "global").as_dict()
           for n in sorted(set(names))}
    inputs = WorkerInputs(train=xs, val=list(vX), synthetic=None, weights=None)
    monkeypatch.setattr(loop, "worker_inputs", lambda cfg: inputs)
    monkeypatch.setattr(linear, "worker_inputs", lambda cfg: inputs)
    tc = TrainConfig(model="ssl_linear", ssl_linear={"layer": layer, "c": 0.1, "c_grid": c_grid or []})
    return WorkerConfig(
        train=tc, arch="ssl_linear", arch_config=arch_config(tc, {"n_layers": N_LAYERS, "states": [], "encoder_states": 0}), classes=CLASSES,
        feature="ssl", input_dim=N_LAYERS * WIDTH, features_dir="unused", train_ids=[str(i) for i in range(len(xs))],
        train_y=ys, train_corpora=names, val_ids=[f"v{i}" for i in range(len(vy))], val_y=vy.tolist(),
        val_corpora=["c0"] * len(vy), stats=compute_stats(xs, "global").as_dict(), stats_per_corpus=per,
        pretrained=None, synthetic=None, ckpt_dir="unused", local_mode=True)


def test_auto_picks_the_layer_that_transfers_across_training_corpora(monkeypatch: pytest.MonkeyPatch) -> None:
    out = linear.fit_linear(worker(monkeypatch, corpora=3))
    choice = out["layer_choice"]
    assert choice["rule"].startswith("leave-one-training-corpus-out") and choice["layer"] == GOOD
    scores = {int(k): v for k, v in choice["scores"].items()}
    assert scores[GOOD] > 0.9 and scores[0] < 0.6  # the corpus-specific layer does not transfer
    assert out["arch_config"]["layer"] == GOOD and out["arch_config"]["n_layers"] == N_LAYERS


def test_the_head_is_the_fitted_regression(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.linear_model import LogisticRegression

    cfg = worker(monkeypatch, corpora=2, layer=-3)  # -3 of 4 = layer 1
    out = linear.fit_linear(cfg)
    assert out["layer_choice"] == {"rule": "set", "layer": 1, "c": 0.1, "c_rule": "set"} and out["arch_config"]["layer"] == 1
    model = build_model("ssl_linear", out["arch_config"], N_LAYERS * WIDTH, len(CLASSES))
    model.load_state_dict({k: torch.tensor(v) for k, v in out["best_state"].items()})
    data = loop.WorkerData(cfg)
    X = np.stack(data.x)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(X[:, WIDTH:2 * WIDTH], data.y)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(X)), 1).numpy()
    assert np.allclose(probs, clf.predict_proba(X[:, WIDTH:2 * WIDTH]), atol=1e-4)


def test_c_is_chosen_on_the_training_corpora_and_is_the_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every grid value is scored by the layer choice's rule, the best wins (ties: the smaller C),
    and the head is the regression fitted with it, not with `train.ssl_linear.c`."""
    from sklearn.linear_model import LogisticRegression

    cfg = worker(monkeypatch, corpora=3, layer=GOOD, c_grid=[1e-6, 1.0])
    out = linear.fit_linear(cfg)
    choice = out["layer_choice"]
    assert choice["c_rule"].startswith("leave-one-training-corpus-out")
    scores = {float(k): v for k, v in choice["c_scores"].items()}
    assert set(scores) == {1e-6, 1.0} and choice["c"] == max(scores, key=lambda c: (scores[c], -c))
    model = build_model("ssl_linear", out["arch_config"], N_LAYERS * WIDTH, len(CLASSES))
    model.load_state_dict({k: torch.tensor(v) for k, v in out["best_state"].items()})
    X = np.stack(loop.WorkerData(cfg).x)[:, GOOD * WIDTH:(GOOD + 1) * WIDTH]
    y = loop.WorkerData(cfg).y
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(np.stack(loop.WorkerData(cfg).x))), 1).numpy()
    assert np.allclose(probs, LogisticRegression(C=choice["c"], max_iter=2000).fit(X, y).predict_proba(X), atol=1e-4)
    assert not np.allclose(probs, LogisticRegression(C=0.1, max_iter=2000).fit(X, y).predict_proba(X), atol=1e-2)
    one = linear.fit_linear(worker(monkeypatch, corpora=1, layer=GOOD, c_grid=[1e-6, 1.0]))["layer_choice"]
    assert one["c"] == 0.1 and one["c_rule"] == "set"  # one corpus: nothing to choose on, train.ssl_linear.c


def test_the_dimensional_head_is_a_ridge_on_the_same_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets that follow the chosen layer (one dimension), and one with too few targets."""
    cfg = worker(monkeypatch, corpora=2, layer=GOOD, val=10)
    X = np.stack(loop.WorkerData(cfg).x)[:, GOOD * WIDTH:(GOOD + 1) * WIDTH]
    arousal = np.tanh(0.3 * X[:, 0] - 0.2 * X[:, 1])
    sparse = np.full(len(X), np.nan)
    sparse[0] = 0.5
    vX = np.stack(loop.WorkerData(cfg).vx)[:, GOOD * WIDTH:(GOOD + 1) * WIDTH]
    from dataclasses import replace

    cfg = replace(cfg, dimension_names=["arousal", "valence"],
                  train_dims=np.stack([arousal, sparse], 1).tolist(),
                  val_dims=np.stack([np.tanh(0.3 * vX[:, 0] - 0.2 * vX[:, 1]), np.full(len(vX), np.nan)], 1).tolist())
    out = linear.fit_linear(cfg)
    assert out["history"][0]["val_ccc_arousal"] > 0.9 and "val_ccc_valence" not in out["history"][0]
    model = build_model("ssl_linear", out["arch_config"], N_LAYERS * WIDTH, len(CLASSES))
    from affectflow.models import dimensions as heads

    heads.attach(model, 2)
    model.load_state_dict({k: torch.tensor(v) for k, v in out["best_state"].items()})  # every key, both heads
    with torch.no_grad():
        _, dims = heads.outputs(model, torch.from_numpy(np.stack(loop.WorkerData(cfg).x)))
    assert dims is not None and float(heads.ccc(dims[:, 0], torch.from_numpy(arousal).float())) > 0.9
    assert torch.all(dims[:, 1] == 0)  # one target: no fit, the scale's centre


def test_two_classes_keep_the_regressions_probabilities() -> None:
    from sklearn.linear_model import LogisticRegression

    from affectflow.models.ssl_linear import SslLinear

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 2 * WIDTH)).astype(np.float32), rng.integers(0, 2, 60)
    clf = LogisticRegression().fit(X[:, WIDTH:], y)
    model = build_model("ssl_linear", {"layer": -1, "c": 1.0, "max_iter": 100, "n_layers": 2}, 2 * WIDTH, 2)
    assert isinstance(model, SslLinear)
    model.set_head(clf.coef_, clf.intercept_)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(X)), 1).numpy()
    assert np.allclose(probs, clf.predict_proba(X[:, WIDTH:]), atol=1e-5)


def test_one_corpus_chooses_on_validation_speakers_or_takes_the_middle(monkeypatch: pytest.MonkeyPatch) -> None:
    with_val = linear.fit_linear(worker(monkeypatch, corpora=1, val=10))["layer_choice"]
    assert with_val["rule"] == "validation speakers, UAR" and set(with_val["scores"]) == {"0", "1", "2", "3"}
    alone = linear.fit_linear(worker(monkeypatch, corpora=1))["layer_choice"]
    assert alone == {"rule": "middle layer (one corpus, no validation speakers)", "layer": N_LAYERS // 2,
                     "c": 0.1, "c_rule": "set"}


def test_a_layer_outside_the_encoder_and_an_unresolved_auto_are_errors() -> None:
    with pytest.raises(ValueError, match=r"train.ssl_linear.layer: 4 is outside the encoder's 4 hidden states"):
        build_model("ssl_linear", {"layer": 4, "n_layers": 4}, 4 * WIDTH, 4)
    with pytest.raises(ValueError, match="layer 'auto' is chosen by training"):
        build_model("ssl_linear", {"layer": "auto", "n_layers": 4}, 4 * WIDTH, 4)


def test_layers_name_the_encoders_hidden_states_when_the_features_keep_only_some(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`features.ssl.layers: [0, 1, 2, 3]` of Whisper-base's 7 states (the encoder stops at 3): `middle`
    is still hidden state 3 (the 4th stored layer, not the 3rd), an index is the encoder's, a state
    the features do not keep is an error naming both settings, and model folders store the state."""
    from affectflow.models.ssl_linear import layer_index

    kept = {"n_layers": 4, "states": [0, 1, 2, 3], "encoder_states": 7}
    assert layer_index("middle", 4, [0, 1, 2, 3], 7) == 3 and layer_index(-4, 4, [0, 1, 2, 3], 7) == 3
    assert layer_index("middle", 4) == 2 and layer_index(3, 2, [6, 3], 7) == 1  # every state / a reordered list
    with pytest.raises(ValueError, match=r"hidden state 5 \(5\) is not kept by features.ssl.layers \(\[0, 1, 2, 3\]\)"):
        build_model("ssl_linear", {"layer": 5, **kept}, 4 * WIDTH, 4)
    model = build_model("ssl_linear", {"layer": "middle", **kept}, 4 * WIDTH, 4)
    x = torch.arange(4 * WIDTH, dtype=torch.float32)[None]
    assert torch.equal(model.encoder(x), x[:, 3 * WIDTH:])
    cfg = worker(monkeypatch, corpora=1)
    cfg.arch_config.update(kept)
    assert linear.fit_linear(cfg)["layer_choice"]["layer"] == 3  # no choice possible: the encoder's middle
    cfg = worker(monkeypatch, corpora=3)
    cfg.arch_config.update({**kept, "states": [2, 3, 4, 5]})
    out = linear.fit_linear(cfg)
    assert out["layer_choice"]["layer"] == out["arch_config"]["layer"] == 2 + GOOD
    assert set(out["layer_choice"]["scores"]) == {"2", "3", "4", "5"}


def test_tiny_encoder_train_evaluate_and_predict_through_the_product(synth_params: Params, tmp_path: Path) -> None:
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.contracts.manifest import read_manifest
    from affectflow.serving.recognizer import load_model_dir, predict_audio, predict_features, predict_scores
    from affectflow.stages.evaluate import evaluate
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.stage import train

    ckpt = save_tiny("wavlm", tmp_path / "wavlm")
    p = _params(synth_params, ckpt, **{"train.model": "ssl_linear"})
    manifest = ingest(p, tmp_path / "ingest").manifest
    extract_features(p, manifest, tmp_path / "features")
    tr = train(p, manifest, tmp_path / "features", tmp_path / "train")
    rec = load_model_dir(tr.model_dir)
    assert rec.meta.arch == "ssl_linear" and rec.meta.arch_config["n_layers"] == 3
    assert isinstance(rec.meta.arch_config["layer"], int) and tr.summary["layer_choice"]["layer"] == \
        rec.meta.arch_config["layer"]
    m = evaluate(p, tr.model_dir, manifest, tmp_path / "features", tmp_path / "evaluate")
    assert 0 <= m.test.uar <= 1
    df = read_manifest(manifest)
    paths = df.loc[df["split"] == "test", "path"].head(3).tolist()
    ids = df.set_index("path").loc[paths, "utt_id"].tolist()
    from_store = predict_features(rec, FeatureSet(tmp_path / "features").load("ssl", ids))
    assert np.allclose(predict_audio(load_model_dir(tr.model_dir), paths), from_store, atol=1e-4)
    assert np.allclose(from_store.sum(1), 1, atol=1e-5)
    # issue 29: the dimensional head (weak labels here) is fitted in closed form too and served
    assert rec.meta.dimensions is not None and m.dimensions is not None  # evaluate scored them
    scored = predict_scores(rec, FeatureSet(tmp_path / "features").load("ssl", ids))
    assert scored.dimensions is not None and scored.dimensions.shape == (len(ids), len(rec.meta.dimensions.names))
    assert np.all(np.abs(scored.dimensions) < 1) and np.ptp(scored.dimensions, axis=0).max() > 0
