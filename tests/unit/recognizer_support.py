"""Helpers for the recognizer tests: a generated corpus with features, and one trained model that
several test modules share (training it once keeps the suite fast).

Features are written the way the features stage writes them (store layout + index.parquet, keys
from `feature_keys`), with log-mel from `affectflow.features.logmel.LogMel`. The `egemaps`
arrays here are a cheap stand-in (per-bin log-mel mean and spread, 88 values), because openSMILE
on every generated clip would cost most of the test budget; models only see an (88,) vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from base_settings import synth_params_at

from affectflow.config import Params

EGEMAPS_DIM = 88

TINY: dict[str, Any] = {
    "train.epochs": 3,
    "train.batch_size": 16,
    "train.crop_frames": 64,
    "train.cnn.channels": [8, 16, 16],
    "train.cnn.gru_hidden": 16,
    "train.cnn.attention_hidden": 16,
    "train.mlp.hidden": [32, 16],
    "train.specaugment.time_width": 10,
    "train.specaugment.freq_width": 4,
    "train.threads": 1,
    "evaluate.bootstrap": 200,
}

_CACHE: dict[str, Any] = {}


def tiny_params(base: Params, **extra: Any) -> Params:
    """`base` (e.g. the synth_params fixture) with tiny, fast model settings and `extra` overrides."""
    tree = base.model_dump(mode="json")
    for key, value in {**TINY, **extra}.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return Params.model_validate(tree)


def write_features(params: Params, manifest: pd.DataFrame, root: Path, utt_ids: list[str] | None = None) -> Path:
    """log-mel (+ stand-in eGeMAPS) for the manifest's clips into a features folder."""
    from affectflow import audio
    from affectflow.contracts.feature_store import feature_path, relative_file, save_array, write_index
    from affectflow.features.logmel import LogMel
    from affectflow.stages.features import feature_keys

    keys = feature_keys(params.model_copy(update={"features": params.features.model_copy(
        update={"kinds": ["logmel", "egemaps"], "egemaps": params.features.egemaps.model_copy(
            update={"levels": ["functionals"]})})}))
    clips = manifest.drop_duplicates("sha256")
    waves = [audio.load(p, params.audio.sample_rate) for p in clips["path"]]
    mels = LogMel(params.features.logmel, params.audio.sample_rate).batch(waves)
    for sha, mel in zip(clips["sha256"], mels, strict=True):
        save_array(feature_path(root, "logmel", keys["logmel"], sha), mel)
        stand_in = np.concatenate([mel.mean(axis=1), mel.std(axis=1)])[:EGEMAPS_DIM]
        save_array(feature_path(root, "egemaps", keys["egemaps"], sha), stand_in)
    shape_of = dict(zip(clips["sha256"], (m.shape for m in mels), strict=True))
    rows = []
    for uid, sha in zip(manifest["utt_id"], manifest["sha256"], strict=True):
        rows.append({"utt_id": uid, "kind": "logmel", "key": keys["logmel"],
                     "file": relative_file("logmel", keys["logmel"], sha), "shape": list(shape_of[sha])})
        rows.append({"utt_id": uid, "kind": "egemaps", "key": keys["egemaps"],
                     "file": relative_file("egemaps", keys["egemaps"], sha), "shape": [EGEMAPS_DIM]})
    write_index(root, pd.DataFrame(rows))
    return root


def _base(factory: Any) -> Path:
    if "base" not in _CACHE:
        _CACHE["base"] = factory.mktemp("recognizer")
    return _CACHE["base"]


def corpus(synth_root: Path, factory: Any) -> tuple[Params, Path, Path]:
    """(params, manifest, features) for the generated corpus, built once per session
    (`factory` is pytest's tmp_path_factory)."""
    if "corpus" not in _CACHE:
        base = _base(factory)
        from affectflow.contracts.manifest import read_manifest
        from affectflow.stages.ingest import ingest

        params = synth_params_at(synth_root, base)
        res = ingest(params, base / "ingest")
        features = write_features(params, read_manifest(res.manifest), base / "features")
        _CACHE["corpus"] = (params, res.manifest, features)
    return _CACHE["corpus"]


def trained(synth_root: Path, factory: Any) -> dict[str, Any]:
    """A tiny CNN-BiGRU trained and evaluated once, through the CLI (`affectflow train`,
    `affectflow evaluate`): params, paths, TrainResult, metrics."""
    if "trained" not in _CACHE:
        from affectflow.cli import main
        from affectflow.config import params_yaml
        from affectflow.stages.train.stage import TrainResult
        from affectflow.storage import read_json

        base = _base(factory)
        params, manifest, features = corpus(synth_root, factory)
        params = tiny_params(params)
        (base / "params.yaml").write_text(params_yaml(params))
        io = ["--params", str(base / "params.yaml"), "--manifest", str(manifest), "--features", str(features)]
        assert main(["train", *io, "--out", str(base / "train")]) == 0
        tr = TrainResult(out_dir=base / "train", model_dir=base / "train" / "model",
                         summary=read_json(base / "train" / "summary.json"))
        assert main(["evaluate", *io, "--model", str(tr.model_dir), "--out", str(base / "evaluate")]) == 0
        _CACHE["trained"] = {"params": params, "manifest": manifest, "features": features, "result": tr,
                             "metrics": read_json(base / "evaluate" / "metrics.json"), "base": base}
    return _CACHE["trained"]
