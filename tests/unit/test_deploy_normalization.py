"""Normalisation that never reads the batch (`train.normalize: corpus` → `deploy_normalization:
running`): audio of an unseen corpus gets the same probabilities whether its clips are sent together
or one at a time (in the same order), in `affectflow predict`, the MLflow pyfunc and the KServe
predictor — the case where 25 angry clips scored in one call came out 9 / 7 / 5 / 4 over four classes.
The evaluate stage keeps the whole-corpus statistics, offline, and agrees with the others on a clip
scored below `deploy_min_clips`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from recognizer_support import corpus, tiny_params

from affectflow import audio
from affectflow.contracts.manifest import read_manifest, write_manifest
from affectflow.serving.kserve import Resolver, score
from affectflow.serving.predict import predict_paths
from affectflow.serving.pyfunc import MODEL_ARTIFACT, AffectflowPyfunc
from affectflow.serving.recognizer import Featurizer, load_model_dir, predict_features
from affectflow.stages.evaluate import evaluate
from affectflow.stages.train.stage import train

N_CLIPS = 25


@pytest.fixture(scope="module")
def trained(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    params, manifest, features = corpus(synth_root, tmp_path_factory)
    tmp = tmp_path_factory.mktemp("deploy")
    p = tiny_params(params, **{"train.normalize": "corpus", "train.epochs": 1, "train.deploy_min_clips": 5,
                               "predict.batch_size": 4, "tracking.log_model": False, "evaluate.bootstrap": 0})
    df = read_manifest(manifest)
    unseen = df["split"] == "test"  # the test speakers play a corpus nobody trained on
    df.loc[unseen, "corpus"] = "unseen"
    df.loc[unseen, "role"] = "heldout"
    write_manifest(df, tmp / "manifest.parquet")
    tr = train(p, tmp / "manifest.parquet", features, tmp / "train")
    rows = df[unseen]
    # the angry clips first (the reported case), then others up to 25 clips of the unseen corpus
    rows = pd.concat([rows[rows["emotion"] == "angry"], rows[rows["emotion"] != "angry"]]).head(N_CLIPS)
    return SimpleNamespace(params=p, features=features, model_dir=tr.model_dir, manifest=tmp / "manifest.parquet",
                           rows=rows, tmp=tmp)


def _with_stats(p, path: Path):
    return p.model_copy(update={"predict": p.predict.model_copy(update={"deploy_stats": str(path)})})


def test_predict_gives_a_clip_the_same_label_alone_and_inside_any_batch(trained, tmp_path: Path) -> None:
    p, paths = trained.params, trained.rows["path"].tolist()
    assert len(paths) == N_CLIPS and load_model_dir(trained.model_dir).meta.deploy_normalization.mode == "running"
    together = predict_paths(_with_stats(p, tmp_path / "a.json"), paths, model_uri=str(trained.model_dir),
                             report=lambda _m: None)
    by_batch = np.stack([r.probabilities for r in together.predictions])
    one_by_one = np.stack([predict_paths(_with_stats(p, tmp_path / "b.json"), [f], model_uri=str(trained.model_dir),
                                         report=lambda _m: None).predictions[0].probabilities for f in paths])
    assert np.allclose(by_batch, one_by_one, atol=1e-5)
    assert [r["label"] for r in together.records()] == [together.classes[int(np.argmax(x))] for x in one_by_one]
    # the statistics persisted with the deployment: 25 clips seen, past deploy_min_clips
    state = json.loads((tmp_path / "a.json").read_text())
    assert state["clips"] == N_CLIPS and state == json.loads((tmp_path / "b.json").read_text())


def test_the_served_models_agree_with_predict_together_and_one_by_one(trained, tmp_path: Path) -> None:
    p, rows = trained.params, trained.rows
    classes = load_model_dir(trained.model_dir).classes
    got = predict_paths(_with_stats(p, tmp_path / "predict.json"), rows["path"].tolist(),
                        model_uri=str(trained.model_dir), report=lambda _m: None)
    by_predict = np.stack([r.probabilities for r in got.predictions])
    waves = [audio.load(f, p.audio.sample_rate) for f in rows["path"]]

    def pyfunc(where: Path) -> AffectflowPyfunc:
        served = AffectflowPyfunc()
        served.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(trained.model_dir)}, model_config={
            "max_rows": 1000, "max_audio_s": 10_000.0, "deploy_stats": str(where)}))
        return served

    def request(ws: list[np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame({"audio": [w.astype(np.float64).tolist() for w in ws],
                             "sample_rate": [p.audio.sample_rate] * len(ws)})

    together = pyfunc(tmp_path / "py1.json").predict(None, request(waves))[classes].to_numpy()
    single = pyfunc(tmp_path / "py2.json")
    alone = np.concatenate([single.predict(None, request([w]))[classes].to_numpy() for w in waves])
    assert np.allclose(together, by_predict, atol=1e-4) and np.allclose(alone, by_predict, atol=1e-4)
    # a restarted server continues from the saved statistics
    assert pyfunc(tmp_path / "py2.json").rec.deployment.stats.clips == N_CLIPS

    # KServe: one request with every clip, or one request per clip (a fresh server each)
    loaded = Resolver(None, str(tmp_path / "ks1.json")).load(str(trained.model_dir), "1")
    by_kserve = score(loaded, [(w, p.audio.sample_rate) for w in waves])
    loaded = Resolver(None, str(tmp_path / "ks2.json")).load(str(trained.model_dir), "1")
    kserve_alone = np.concatenate([score(loaded, [(w, p.audio.sample_rate)]) for w in waves])
    assert np.allclose(by_kserve, by_predict, atol=1e-4) and np.allclose(kserve_alone, by_predict, atol=1e-4)


def test_evaluate_keeps_the_whole_corpus_statistics_offline(trained) -> None:
    p = trained.params
    evaluate(p, trained.model_dir, trained.manifest, trained.features, trained.tmp / "evaluate")
    pred = pd.read_parquet(trained.tmp / "evaluate" / "predictions.parquet")
    pred = pred[pred["corpus"] == "unseen"].drop_duplicates("utt_id")
    rec = load_model_dir(trained.model_dir)
    rows = read_manifest(trained.manifest).set_index("utt_id").loc[pred["utt_id"]]
    feats = Featurizer(rec.meta)([audio.load(f, p.audio.sample_rate) for f in rows["path"]])
    offline = predict_features(rec, feats, whole_set=True)
    assert np.allclose(pred[[f"p_{c}" for c in rec.classes]].to_numpy(), offline, atol=1e-4)
    assert rec.deployment.stats.clips == 0  # offline scoring is no deployment traffic
