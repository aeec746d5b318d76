"""The label-free deploy normalisation (`train.normalize: corpus` → `deploy_normalization: set`)
scores audio of an unseen corpus alike wherever it is scored: the evaluate stage (a held-out
corpus, from the feature store), `affectflow predict` (files, in batches smaller than the set) and
the served model (the MLflow pyfunc, one request)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from recognizer_support import corpus, tiny_params

from affectflow import audio
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.serving.predict import predict_paths
from affectflow.serving.pyfunc import MODEL_ARTIFACT, AffectflowPyfunc
from affectflow.serving.recognizer import Featurizer, load_model_dir, predict_features
from affectflow.stages.evaluate import evaluate
from affectflow.stages.train.stage import train


def test_an_unseen_corpus_is_scored_alike_by_evaluate_predict_and_the_served_model(
        synth_root: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    p = tiny_params(params, **{"train.normalize": "corpus", "train.epochs": 1, "train.deploy_min_clips": 5,
                               "predict.batch_size": 4, "tracking.log_model": False, "evaluate.bootstrap": 0})
    df = read_manifest(manifest)
    unseen = df["split"] == "test"  # the test speakers play a corpus nobody trained on
    df.loc[unseen, "corpus"] = "unseen"
    df.loc[unseen, "role"] = "heldout"
    write_manifest(df, tmp_path / "manifest.parquet")
    tr = train(p, tmp_path / "manifest.parquet", features, tmp_path / "train")
    rec = load_model_dir(tr.model_dir)
    assert rec.meta.deploy_normalization.mode == "set" and rec.stats_for(None) is None
    classes = rec.classes

    evaluate(p, tr.model_dir, tmp_path / "manifest.parquet", features, tmp_path / "evaluate")
    pred = pd.read_parquet(tmp_path / "evaluate" / "predictions.parquet")
    pred = pred[pred["corpus"] == "unseen"].drop_duplicates("utt_id").set_index("utt_id")
    rows = df[unseen].set_index("utt_id").loc[pred.index]
    assert len(rows) > 4 * p.predict.batch_size  # the set spans several predict batches
    by_evaluate = pred[[f"p_{c}" for c in classes]].to_numpy()

    got = predict_paths(p, rows["path"].tolist(), model_uri=str(tr.model_dir), report=lambda _m: None)
    by_predict = np.stack([r.probabilities for r in got.predictions])

    served = AffectflowPyfunc()
    served.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(tr.model_dir)},
                                        model_config={"max_rows": 1000, "max_audio_s": 10_000.0}))
    waves = [audio.load(f, p.audio.sample_rate) for f in rows["path"]]
    request = pd.DataFrame({"audio": [w.astype(np.float64).tolist() for w in waves],
                            "sample_rate": [p.audio.sample_rate] * len(waves)})
    by_server = served.predict(None, request)[classes].to_numpy()

    assert np.allclose(by_predict, by_evaluate, atol=1e-4)
    assert np.allclose(by_server, by_evaluate, atol=1e-4)
    # batch by batch (each batch its own statistics) the same clips score differently
    feats = Featurizer(rec.meta)(waves)
    batchwise = np.concatenate([predict_features(rec, feats[i:i + 5]) for i in range(0, len(feats), 5)])
    assert not np.allclose(batchwise, by_evaluate, atol=1e-3)
