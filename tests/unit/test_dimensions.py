"""Arousal / valence: targets (labelled columns rescaled per corpus, weak labels from the circumplex
with RAVDESS's intensity), the CCC metric and loss, and dimensional labels from a CSV end to end:
ingest -> train -> evaluate CCC -> pyfunc output, with the weak-label flag in every report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from base_settings import base_params
from recognizer_support import tiny_params, write_features

from affectflow.corpora.dimensions import (
    INTENSITY_SHIFT,
    LABELLED,
    MISSING,
    WEAK,
    dimension_targets,
    labelled_dimensions,
    weak_point,
)
from affectflow.metrics import ccc, ccc_bootstrap
from affectflow.models import dimensions as heads


def _rows(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols)


# ----------------------------------------------------------------------------- targets
def test_weak_points_sit_on_russells_anchors():
    a, v = weak_point("angry")  # distress, 135 degrees
    assert a == pytest.approx(math.sqrt(0.5), abs=1e-6) and v == pytest.approx(-math.sqrt(0.5), abs=1e-6)
    assert weak_point("happy") == pytest.approx((0.0, 1.0))  # pleasure, 0 degrees
    assert weak_point("sad")[0] < 0 and weak_point("sad")[1] < 0  # depression, 225 degrees
    assert weak_point("neutral") == (0.0, 0.0)
    assert weak_point("other") is None


def test_labelled_columns_are_rescaled_per_corpus_and_others_get_weak_labels():
    df = _rows(corpus=["a", "a", "a", "b", "b", "r", "r"],
               label=["happy", "sad", "angry", "happy", "angry", "angry", "angry"],
               arousal=[1.0, 5.0, 9.0, 0.2, 0.4, np.nan, np.nan],  # corpus a on 1-9, b on 0-1
               valence=[np.nan] * 7, dominance=[np.nan, 3.0, np.nan, np.nan, np.nan, np.nan, np.nan],
               intensity=["", "", "", "", "", "normal", "strong"])
    assert labelled_dimensions(df) == ["arousal", "valence", "dominance"]
    t = dimension_targets(df)
    a = t.values[:, 0]
    assert a[:3] == pytest.approx([-1.0, 0.0, 1.0]) and a[3:5] == pytest.approx([-1.0, 1.0])
    # corpus r has no arousal column values: the circumplex point, moved by its intensity
    base = weak_point("angry")[0]
    assert a[5] == pytest.approx(base - INTENSITY_SHIFT) and a[6] == pytest.approx(min(1.0, base + INTENSITY_SHIFT))
    assert t.values[0, 1] == pytest.approx(weak_point("happy")[1])  # no valence anywhere: weak
    assert t.values[1, 2] == 0.0 and np.isnan(t.values[0, 2])  # a constant labelled column; a row without one
    assert np.isnan(t.values[3, 2])  # the circumplex has no dominance: missing, never invented
    assert t.sources["a"] == {"arousal": LABELLED, "valence": WEAK, "dominance": LABELLED}
    assert t.sources["b"]["dominance"] == MISSING and t.sources["r"]["arousal"] == WEAK
    assert t.weak


def test_only_arousal_and_valence_without_a_dominance_column():
    df = _rows(corpus=["a", "a"], label=["happy", "sad"])
    assert labelled_dimensions(df) == ["arousal", "valence"]
    t = dimension_targets(df)
    assert t.values.shape == (2, 2) and t.weak


# ----------------------------------------------------------------------------- CCC
def test_ccc_rewards_agreement_not_just_correlation():
    x = np.linspace(-1, 1, 50)
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, 0.5 * x) < 0.9  # perfectly correlated, wrong scale
    assert ccc(x + 0.5, x) < 0.9  # perfectly correlated, shifted
    assert ccc(-x, x) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    noisy = x + rng.normal(0, 0.3, x.size)
    est = ccc_bootstrap(noisy, x, n_resamples=300)
    assert est.low < est.value < est.high and est.value == pytest.approx(ccc(noisy, x))
    with_nan = np.r_[x, np.nan]
    assert ccc_bootstrap(np.r_[noisy, 0.0], with_nan, 0).value == pytest.approx(ccc(noisy, x))


def test_ccc_loss_matches_the_metric_and_skips_missing_targets():
    rng = np.random.default_rng(1)
    p = torch.tensor(rng.normal(0, 1, (40, 2)), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(rng.normal(0, 1, (40, 2)), dtype=torch.float32)
    t[:10, 1] = float("nan")
    loss = heads.ccc_loss(p, t)
    want = 1 - (ccc(p[:, 0].detach().numpy(), t[:, 0].numpy()) + ccc(p[10:, 1].detach().numpy(), t[10:, 1].numpy())) / 2
    assert float(loss.detach()) == pytest.approx(want, abs=1e-5)
    loss.backward()
    assert torch.isfinite(p.grad).all() and float(p.grad[:10, 1].abs().sum()) == 0.0
    none = heads.ccc_loss(p, torch.full((40, 2), float("nan")))
    assert float(none) == 0.0 and none.requires_grad  # no targets in the batch: no loss, still backward-able


# ----------------------------------------------------------------------------- end to end
def _csv_corpus(root: Path) -> Path:
    """8 speakers x 4 emotions x 4 clips; arousal (1-9 scale) is the clip's loudness, valence (0-100)
    its emotion's plus jitter: annotations a model can learn from audio."""
    from affectflow.corpora.demo import utterance

    rng = np.random.default_rng(0)
    valence = {"neutral": 50, "happy": 85, "sad": 20, "angry": 15}
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for spk in range(1, 9):
        for emo in valence:
            for k in range(4):
                gain = float(rng.uniform(0.05, 1.0))
                wave = utterance(emo, speaker=spk, seed=spk * 100 + k, duration=1.2)
                wave = wave / max(np.abs(wave).max(), 1e-6) * 0.9 * gain
                name = f"s{spk}_{emo}_{k}.wav"
                sf.write(root / name, wave.astype(np.float32), 16000, subtype="PCM_16")
                rows.append({"path": name, "speaker": f"s{spk}", "emotion": emo,
                             "arousal": round(1 + 8 * (gain - 0.05) / 0.95, 3),
                             "valence": valence[emo] + float(rng.normal(0, 5))})
    csv = root / "corpus.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from affectflow.contracts.manifest import read_manifest
    from affectflow.stages.evaluate import evaluate
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.stage import train

    base = tmp_path_factory.mktemp("dims")
    csv = _csv_corpus(base / "annotated")
    params = tiny_params(base_params({
        "paths.workdir": str(base / "work"), "paths.data_root": str(base),
        "ingest.corpora": [{"name": "annotated", "adapter": "csv", "root": str(csv)}],
        "ingest.classes": ["neutral", "happy", "sad", "angry"], "ingest.workers": 1, "features.workers": 1,
        "tracking.uri": f"sqlite:///{base / 'mlflow.db'}", "tracking.artifact_location": str(base / "mlartifacts"),
    }), **{"train.model": "cnn_bigru", "train.epochs": 25, "train.lr": 0.005, "train.dimension_weight": 1.0})
    manifest = ingest(params, base / "ingest").manifest
    df = read_manifest(manifest)
    features = write_features(params, df, base / "features")
    tr = train(params, manifest, features, base / "train")
    metrics = evaluate(params, tr.model_dir, manifest, features, base / "evaluate")
    return {"params": params, "manifest": df, "model_dir": tr.model_dir, "metrics": metrics, "base": base,
            "csv": csv}


def test_csv_dimensions_flow_from_ingest_through_training_to_evaluate(csv_run: dict):
    from affectflow.contracts.model_folder import read_model_meta

    df = csv_run["manifest"]
    assert df["arousal"].between(1, 9).all() and df["valence"].notna().all()  # stored on the corpus's own scale
    meta = read_model_meta(csv_run["model_dir"])
    assert meta.dimensions is not None and meta.dimensions.names == ["arousal", "valence"]
    assert meta.dimensions.weak_labels is False
    assert meta.dimensions.sources == {"annotated": {"arousal": LABELLED, "valence": LABELLED}}
    dims = csv_run["metrics"].dimensions
    assert dims is not None and dims.weak_labels is False and dims.names == ["arousal", "valence"]
    test = dims.sets["test"]
    for name in ("arousal", "valence"):
        r = test[name]
        assert r.n == csv_run["metrics"].test.n
        assert r.ccc_ci_low <= r.ccc <= r.ccc_ci_high
        assert set(r.per_corpus) == {"annotated"}
    # loudness is in the (log-mel) features and valence follows the emotion: both are learnt on unseen speakers
    assert test["arousal"].ccc > 0.5, test
    assert test["valence"].ccc > 0.3, test
    # the typed section survives metrics.json: the registry and the model card read it through the contract
    from affectflow.contracts.evaluation import read_evaluation

    assert read_evaluation(csv_run["base"] / "evaluate").dimensions == dims
    pred = pd.read_parquet(csv_run["base"] / "evaluate" / "predictions.parquet")
    assert pred["arousal"].between(-1, 1).all() and pred["arousal_target"].between(-1, 1).all()
    report = (csv_run["base"] / "evaluate" / "report.md").read_text()
    assert "## Dimensions (CCC)" in report and "weak_labels: false" in report


def test_pyfunc_returns_the_dimensions_beside_the_classes(csv_run: dict):
    from affectflow.serving.pyfunc import MODEL_ARTIFACT, AffectflowPyfunc, signature

    model = AffectflowPyfunc()
    model.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(csv_run["model_dir"])}, model_config={}))
    folder = csv_run["csv"].parent
    rows = pd.read_csv(csv_run["csv"]).sort_values("arousal")
    quiet, loud = (folder / rows["path"].iloc[0], folder / rows["path"].iloc[-1])  # extremes of the annotation
    waves = [sf.read(p, dtype="float32")[0] for p in (loud, quiet)]
    out = model.predict(None, pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [16000, 16000]}))
    assert list(out.columns) == ["neutral", "happy", "sad", "angry", "arousal", "valence", "label", "status"]
    assert out[["arousal", "valence"]].abs().le(1).all().all()
    gains = [np.abs(w).max() for w in waves]
    louder = int(np.argmax(gains))
    assert out["arousal"][louder] > out["arousal"][1 - louder]  # the louder clip reads as more aroused
    names = [c.name for c in signature(["a", "b"], ["arousal", "valence"]).outputs.inputs]
    assert names[:4] == ["a", "b", "arousal", "valence"]


def test_pyfunc_timeline_option_gives_segments_with_dimensions(csv_run: dict):
    from affectflow.serving.pyfunc import MODEL_ARTIFACT, AffectflowPyfunc

    model = AffectflowPyfunc()
    model.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(csv_run["model_dir"])}, model_config={}))
    folder = csv_run["csv"].parent
    wave = np.concatenate([sf.read(folder / f"s2_sad_{k}.wav", dtype="float32")[0] for k in range(4)])
    out = model.predict(None, pd.DataFrame({"audio": [wave.tolist()], "sample_rate": [16000]}),
                        params={"timeline": True, "window_s": 1.0, "hop_s": 0.5, "smooth": 1})
    assert list(out.columns)[:2] == ["start_s", "end_s"] and {"arousal", "valence", "label", "status"} <= set(out)
    assert len(out) > 3 and out["start_s"].is_monotonic_increasing
    assert out["end_s"].iloc[-1] == pytest.approx(len(wave) / 16000, abs=0.01)
    with pytest.raises(ValueError, match="one recording"):
        model.predict(None, pd.DataFrame({"audio": [wave.tolist()] * 2, "sample_rate": [16000] * 2}),
                      params={"timeline": True})


def test_weak_label_flag_reaches_evaluate_registry_tags_and_model_card(csv_run: dict, tmp_path: Path):
    """The same CSV corpus without its annotations: weak labels, flagged in every report."""
    from affectflow.contracts.manifest import read_manifest
    from affectflow.contracts.model_folder import read_model_meta
    from affectflow.stages.evaluate import evaluate
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.stage import train
    from affectflow.tracking import dimensions as dimension_card
    from affectflow.tracking.model_card import SECTIONS, model_card

    plain = pd.read_csv(csv_run["csv"]).drop(columns=["arousal", "valence"])
    csv = csv_run["csv"].parent / "plain.csv"
    plain.to_csv(csv, index=False)
    params = csv_run["params"].model_copy(deep=True)
    params = tiny_params(params, **{"ingest.corpora": [{"name": "plain", "adapter": "csv", "root": str(csv)}],
                                    "paths.workdir": str(tmp_path / "work"), "train.epochs": 3})
    manifest = ingest(params, tmp_path / "ingest").manifest
    features = write_features(params, read_manifest(manifest), tmp_path / "features")
    tr = train(params, manifest, features, tmp_path / "train")
    metrics = evaluate(params, tr.model_dir, manifest, features, tmp_path / "evaluate")
    meta = read_model_meta(tr.model_dir)
    assert meta.dimensions.weak_labels is True and meta.dimensions.sources["plain"]["arousal"] == WEAK
    assert metrics.dimensions is not None and metrics.dimensions.weak_labels is True
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["dimensions"]["weak_labels"] is True
    assert "**weak_labels: true**" in (tmp_path / "evaluate" / "report.md").read_text()
    tags = dimension_card.version_tags(metrics.dimensions)
    assert tags["weak_labels"] == "true" and set(tags) >= {"ccc_arousal", "ccc_valence"}
    card = model_card(meta, metrics, title="ser v1")
    assert f"## {dimension_card.SECTION}" in card and dimension_card.SECTION in SECTIONS
    assert "**weak_labels: true**" in card and "Russell" in card
    annotated = model_card(read_model_meta(csv_run["model_dir"]), csv_run["metrics"], title="ser v2")
    assert "weak_labels of the scored targets: false" in annotated


def test_predict_writes_arousal_and_valence_per_file(csv_run: dict):
    from affectflow.serving.predict import predict_paths

    rows = pd.read_csv(csv_run["csv"]).sort_values("arousal")
    paths = [str(csv_run["csv"].parent / rows["path"].iloc[k]) for k in (0, -1)]  # the quietest, the loudest
    res = predict_paths(csv_run["params"], paths, model_uri=str(csv_run["model_dir"]))
    assert res.dimensions == ["arousal", "valence"] and res.weak_labels is False
    quiet, loud = res.records()
    assert {"arousal", "valence"} <= set(quiet) and loud["arousal"] > quiet["arousal"]
    assert quiet["label"] in csv_run["params"].ingest.classes  # the argmax runs over the classes only
    head = res.to_csv().splitlines()[0].split(",")
    assert head[head.index("angry") + 1: head.index("angry") + 3] == ["arousal", "valence"]
    doc = res.to_json()
    assert doc["dimensions"] == ["arousal", "valence"] and doc["weak_labels"] is False
    assert set(doc["predictions"][0]["dimensions"]) == {"arousal", "valence"}
    assert "arousal" not in doc["predictions"][0]["probabilities"]


def test_dimension_weight_zero_trains_the_class_head_alone(csv_run: dict, tmp_path: Path):
    from affectflow.contracts.model_folder import read_model_meta
    from affectflow.serving.recognizer import load_model_dir
    from affectflow.stages.train.stage import train

    params = tiny_params(csv_run["params"], **{"train.dimension_weight": 0.0, "train.model": "egemaps_mlp"})
    base = csv_run["base"]
    tr = train(params, base / "ingest" / "manifest.parquet", base / "features", tmp_path / "train")
    assert read_model_meta(tr.model_dir).dimensions is None
    rec = load_model_dir(tr.model_dir)
    assert not heads.has_head(rec.model) and not any(k.startswith(heads.HEAD) for k in rec.model.state_dict())


def test_kserve_metadata_lists_the_dimensions_output_only_for_a_model_with_the_head():
    from affectflow.serving.kserve import DIMENSIONS, metadata_tensors

    _, with_head = metadata_tensors(4, 2)
    assert with_head[-1] == {"name": DIMENSIONS, "datatype": "FP32", "shape": [-1, 2]}
    assert DIMENSIONS not in {o["name"] for o in metadata_tensors(4)[1]}


def test_the_prediction_log_keeps_probabilities_and_dimensions_apart(csv_run: dict, tmp_path: Path):
    """A model with the dimensional head: each logged record has the class probabilities only under
    `probabilities` and the dimensions under `dimensions` (named); a timeline request logs nothing
    and leaves the next request's record whole."""
    from affectflow.serving.prediction_log import read_log
    from affectflow.serving.pyfunc import MODEL_ARTIFACT, AffectflowPyfunc

    log = tmp_path / "log"
    model = AffectflowPyfunc()
    model.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(csv_run["model_dir"])},
                                       model_config={"prediction_log": str(log)}))
    folder = csv_run["csv"].parent
    waves = [sf.read(folder / f"s3_{emo}_0.wav", dtype="float32")[0] for emo in ("happy", "sad")]
    model.predict(None, pd.DataFrame({"audio": [np.concatenate(waves).tolist()], "sample_rate": [16000]}),
                  params={"timeline": True, "window_s": 1.0, "hop_s": 0.5, "smooth": 1})
    out = model.predict(None, pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [16000] * 2}))
    model.rec.recorder.log.flush()
    df = read_log(log)
    assert len(df) == 2 and list(df["status"]) == ["ok", "ok"]
    classes = ["neutral", "happy", "sad", "angry"]
    assert np.allclose(np.stack(df["probabilities"].to_list()), out[classes].to_numpy(np.float32), atol=1e-6)
    assert [list(n) for n in df["dimension_names"]] == [["arousal", "valence"]] * 2
    assert np.allclose(np.stack(df["dimensions"].to_list()), out[["arousal", "valence"]].to_numpy(np.float32),
                       atol=1e-6)
    assert all(s is not None and len(s) == 16 for s in df["summary"])  # the timeline's windows did not leak in
