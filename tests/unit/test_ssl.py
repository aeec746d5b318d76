"""Pretrained speech encoders as a front-end, through exactly the path a real checkpoint takes — with
tiny randomly initialised WavLM and HuBERT models built from `transformers` configs and saved to a
temporary folder (nothing is downloaded): extraction, caching, training, evaluation, the logged
pyfunc (which carries the encoder) and a request to `mlflow models serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affectflow.config import Params, with_overrides
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.features.ssl import SslCheckpointError, checkpoint_hash
from affectflow.runtime.netutil import free_port, http_ok, stop_group

TINY_CONV = {"conv_dim": (16,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2),
             "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


def save_tiny(kind: str, folder: Path, seed: int = 0) -> Path:
    """A 2-layer WavLM / HuBERT with random weights and a feature extractor, saved like a checkpoint."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(seed)
    cls, cfg = {"wavlm": (WavLMModel, WavLMConfig), "hubert": (HubertModel, HubertConfig)}[kind]
    cls(cfg(**TINY_CONV)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("wavlm", tmp_path_factory.mktemp("wavlm"))


def _params(synth_params: Params, ckpt: Path, **over: Any) -> Params:
    return with_overrides(synth_params, {
        "features.kinds": ["ssl"], "features.ssl.checkpoint": str(ckpt), "features.ssl.batch_size": 8,
        "features.ssl.chunk_s": 0.8, "features.ssl.device": "cpu",
        "train.model": "ssl_head", "train.ssl_head.hidden": [16], "train.epochs": 3, "train.batch_size": 16,
        "evaluate.bootstrap": 0, **over})


def test_extraction_is_cached_under_the_checkpoint_content(synth_params: Params, wavlm: Path, tmp_path: Path) -> None:
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest

    p = _params(synth_params, wavlm)
    manifest = ingest(p, tmp_path / "ingest").manifest
    res = extract_features(p, manifest, tmp_path / "features")
    assert res.summary["kinds"]["ssl"]["computed"] == len(read_manifest(manifest))
    assert res.summary["ssl"]["dim"] == 3 * 32 and res.summary["ssl"]["layers"] == [0, 1, 2]
    fs = FeatureSet(tmp_path / "features")
    X = fs.matrix("ssl", read_manifest(manifest)["utt_id"].tolist())
    assert X.shape[1] == 96 and np.isfinite(X).all() and X.std(axis=0).max() > 0
    again = extract_features(p, manifest, tmp_path / "features")
    assert again.summary["kinds"]["ssl"]["computed"] == 0  # warm: same content, same key
    # chunking: a clip encoded in windows is close to, not exactly, the one-window encoding
    long = extract_features(with_overrides(p, {"features.ssl.chunk_s": 30.0}), manifest, tmp_path / "f2")
    assert long.summary["kinds"]["ssl"]["key"] != res.summary["kinds"]["ssl"]["key"]
    # other weights under the same path: another key (content, not name)
    other = save_tiny("wavlm", tmp_path / "moved", seed=1)
    assert checkpoint_hash(with_overrides(p, {"features.ssl.checkpoint": str(other)}).features.ssl) != \
        checkpoint_hash(p.features.ssl)
    layers = extract_features(with_overrides(p, {"features.ssl.layers": [-1]}), manifest, tmp_path / "f3")
    assert layers.summary["ssl"]["dim"] == 32
    # on the CPU, two lanes (threads sharing the encoder, one torch thread each) give the same vectors
    from affectflow.stages.features.worker import _cpu_count

    lanes = extract_features(with_overrides(p, {"features.workers": 2}), manifest, tmp_path / "f4")
    assert lanes.summary["ssl"]["lanes"] == min(2, _cpu_count()) and lanes.summary["ssl"]["layers_run"] == 2
    np.testing.assert_allclose(FeatureSet(tmp_path / "f4").matrix("ssl", read_manifest(manifest)["utt_id"].tolist()),
                               X, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,stable", [("wavlm", False), ("wavlm", True), ("hubert", False)])
def test_the_encoder_stops_at_the_highest_kept_layer(tmp_path: Path, kind: str, stable: bool) -> None:
    """A truncated copy of the layer list gives the full run's kept states ("stable layer norm"
    encoders apply a final norm to the last state only: it goes with the dropped layers)."""
    import torch
    from transformers import AutoConfig

    from affectflow.config import SslConfig
    from affectflow.features.ssl import SslEncoder

    folder = save_tiny(kind, tmp_path / kind)
    if stable:
        cfg = AutoConfig.from_pretrained(folder)
        cfg.do_stable_layer_norm = True
        cfg.save_pretrained(folder)
    rng = np.random.default_rng(0)
    waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000)]
    full = SslEncoder(SslConfig(checkpoint=str(folder), layers=[]), 16000)
    early = SslEncoder(SslConfig(checkpoint=str(folder), layers=[1, 0]), 16000)
    assert (full.layers_run, early.layers_run, len(early.model.encoder.layers)) == (2, 1, 1)
    assert isinstance(early.model.encoder.layer_norm, torch.nn.Identity) == stable
    ref = np.stack(full(waves)).reshape(2, 3, 32)
    np.testing.assert_allclose(np.stack(early(waves)).reshape(2, 2, 32), ref[:, [1, 0]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref[:, 2], ref[:, 1], atol=1e-3)  # the dropped layer is not the kept one


def test_a_missing_checkpoint_says_where_it_looked(synth_params: Params, tmp_path: Path, monkeypatch) -> None:
    from affectflow.features.ssl import SslEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SslCheckpointError, match=r"no config.json in .*/empty"):
        (tmp_path / "empty").mkdir()
        SslEncoder(_params(synth_params, tmp_path / "empty").features.ssl, 16000)
    with pytest.raises(SslCheckpointError, match="not found as a hub id in the offline Hugging Face cache"):
        SslEncoder(_params(synth_params, Path("nobody/no-such-model")).features.ssl, 16000)


def test_hubert_end_to_end_train_evaluate_pyfunc_and_a_served_request(synth_params: Params, tmp_path: Path) -> None:
    import mlflow

    from affectflow.serving.predict import invocations_payload, post_invocations
    from affectflow.serving.recognizer import load_model_dir, predict_audio
    from affectflow.stages.evaluate import evaluate
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.stage import train
    from affectflow.tracking.uri import resolve_uri

    ckpt = save_tiny("hubert", tmp_path / "hubert")
    p = _params(synth_params, ckpt, **{"tracking.log_model": True})
    manifest = ingest(p, tmp_path / "ingest").manifest
    extract_features(p, manifest, tmp_path / "features")
    tr = train(p, manifest, tmp_path / "features", tmp_path / "train")
    rec = load_model_dir(tr.model_dir)
    assert rec.meta.arch == "ssl_head" and rec.meta.arch_config["n_layers"] == 3
    assert rec.meta.feature_config["checkpoint_sha"] == checkpoint_hash(p.features.ssl)
    m = evaluate(p, tr.model_dir, manifest, tmp_path / "features", tmp_path / "evaluate")
    assert 0 <= m.test.uar <= 1
    df = read_manifest(manifest)
    paths = df.loc[df["split"] == "test", "path"].head(3).tolist()
    from_audio = predict_audio(rec, paths)
    fs = FeatureSet(tmp_path / "features")
    from affectflow.serving.recognizer import predict_features

    ids = df.set_index("path").loc[paths, "utt_id"].tolist()
    assert np.allclose(from_audio, predict_features(rec, fs.load("ssl", ids)), atol=1e-4)  # same path as training
    # the logged pyfunc carries the encoder: served after the original folder is gone
    uri = f"runs:/{tr.summary['mlflow_run_id']}/model"
    store = resolve_uri(p.tracking.uri)
    mlflow.set_tracking_uri(store)
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "pyfunc")))
    assert (local / "artifacts" / ckpt.name / "config.json").is_file()  # the encoder travels in the model
    ckpt.rename(tmp_path / "gone")
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", str(local), "--env-manager",
                                 "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not http_ok(f"http://127.0.0.1:{port}/ping"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
                time.sleep(0.5)
            got = post_invocations(f"http://127.0.0.1:{port}", invocations_payload(files=paths))
        finally:
            stop_group(proc, 15)
    assert np.allclose(got[rec.classes].to_numpy(), from_audio, atol=1e-4)
