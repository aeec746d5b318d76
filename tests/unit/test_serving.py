"""The pyfunc model: audio files or waveforms in, class probabilities out, on its own."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from recognizer_support import trained

from affectflow import audio, tracking
from affectflow.features.store import FeatureSet
from affectflow.inference import load_model_dir, predict_audio, predict_features
from affectflow.manifest import read_manifest
from affectflow.serving import parse_input


@pytest.fixture(scope="module")
def pyfunc(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    mlflow.set_tracking_uri(tracking.resolve_uri(t["params"].tracking.uri))
    return t, mlflow.pyfunc.load_model(f"runs:/{t['result'].summary['mlflow_run_id']}/model")


def test_pyfunc_predicts_from_a_file_path_like_the_trained_model(pyfunc):
    t, model = pyfunc
    row = read_manifest(t["manifest"]).query("split == 'test'").iloc[0]
    out = model.predict(pd.DataFrame({"path": [row["path"]]}))
    classes = t["result"].summary["classes"]
    assert list(out.columns) == [*classes, "label"]
    probs = out[classes].to_numpy()
    assert probs.shape == (1, len(classes)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Feature extraction inside the model = the features stage: same probabilities as from the store.
    rec = load_model_dir(t["result"].model_dir)
    stored = predict_features(rec, FeatureSet(t["features"]).load("logmel", [row["utt_id"]]))
    assert np.allclose(probs, stored, atol=1e-4)
    assert out["label"].iloc[0] == classes[int(stored.argmax())]


def test_pyfunc_takes_waveforms_and_resamples_them(pyfunc):
    t, model = pyfunc
    path = read_manifest(t["manifest"]).iloc[0]["path"]
    wave = audio.load(path, 16000)
    same = model.predict(pd.DataFrame({"audio": [wave.astype(np.float64)], "sample_rate": [16000]}))
    from_path = model.predict(pd.DataFrame({"path": [path]}))
    assert np.allclose(same.iloc[:, :-1].to_numpy(), from_path.iloc[:, :-1].to_numpy(), atol=1e-5)
    at_8k = audio.resample(wave, 16000, 8000)
    out = model.predict(pd.DataFrame({"audio": [at_8k.astype(np.float64)], "sample_rate": [8000]}))
    assert np.allclose(out.iloc[:, :-1].sum(axis=1), 1.0, atol=1e-5)


def test_the_logged_model_carries_its_code_and_signature(pyfunc):
    t, model = pyfunc
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{t['result'].summary['mlflow_run_id']}/model"))
    assert (local / "code" / "affectflow" / "inference.py").is_file()
    assert (local / "artifacts").is_dir() and any((local / "artifacts").rglob("model.json"))
    names = [c.name for c in model.metadata.get_input_schema().inputs]
    assert names == ["path", "audio", "sample_rate"]


def test_inference_from_paths_and_arrays_agree(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    t = trained(synth_root, tmp_path_factory)
    rec = load_model_dir(t["result"].model_dir)
    paths = read_manifest(t["manifest"])["path"].tolist()[:3]
    by_path = predict_audio(rec, paths)
    by_wave = predict_audio(rec, [audio.load(p, 16000) for p in paths])
    assert by_path.shape == (3, 4) and np.allclose(by_path, by_wave)


def test_parse_input_accepts_lists_and_rejects_nonsense():
    groups = parse_input(["a.wav", "b.wav"])
    assert groups == [([0, 1], ["a.wav", "b.wav"], None)]
    mixed = parse_input(pd.DataFrame({"audio": [np.zeros(4), np.ones(4)], "sample_rate": [8000, 16000]}))
    assert sorted(r for _, _, r in mixed) == [8000, 16000]
    with pytest.raises(ValueError, match="'path' or an 'audio' column"):
        parse_input(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="row 0"):
        parse_input(pd.DataFrame({"path": [None]}))
