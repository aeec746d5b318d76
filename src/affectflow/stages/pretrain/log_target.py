"""The prediction log as DANN's unlabelled target (`pretrain.target_log`).

The audio a served model receives is the target DANN needs. With `pretrain.target_log` set to a
prediction log (`affectflow.serving.prediction_log`), its scored clips become one more corpus,
`LOG_CORPUS`, role `target`, without labels:

- vector kinds (eGeMAPS, ComParE functionals, ...): each record's raw moments are the clip's
  features themselves (a vector is one frame: `moment_mean` is the vector), so no audio is needed;
- frame-level kinds (log-mel, LLDs): the clip's audio is needed (`monitor.keep_audio`); the kept
  files are featurised with the feature configuration of `params` (the features stage's code via
  `serving.recognizer.Featurizer`).

The arrays go into a derived feature store under the stage's output (`LOG_STORE`), whose index lists
the original store's rows (by absolute path: nothing is copied) plus the log's shard, and the
manifest gets one row per logged clip (`split` train, a fifth `val` for the domain probe; never
`test`: no label, no score). Records of other features (`feature_key`) are an error naming the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from affectflow.config import Params
from affectflow.contracts.feature_store import FeatureSet, write_index, write_shard
from affectflow.features.keys import kind_spec
from affectflow.models import feature_kind
from affectflow.serving.prediction_log import read_log

LOG_CORPUS = "deployment"
"""The corpus name of logged clips in DANN's domains."""
LOG_STORE = "log_features"
VAL_EVERY = 5
"""Every fifth logged clip is held out (split val) for the domain probe."""
SESSION = 20
"""Logged clips carry no speaker: blocks of this many consecutive clips stand in for one (the domain
probe's grouped folds need groups)."""
"""Every fifth logged clip is held out (split val) for the domain probe and DEV's target sample."""


class LogTargetError(ValueError):
    """A prediction log that cannot be DANN's target; the message names the log and the field."""


def log_arrays(params: Params, records: pd.DataFrame, kind: str, where: str) -> list[np.ndarray]:
    """The raw features of each scored record (see the module docstring)."""
    if not kind_spec(kind).frame_level:
        return [np.asarray(m, np.float32) for m in records["moment_mean"]]
    paths = records["audio"].dropna()
    if len(paths) < len(records):
        raise LogTargetError(f"{where}: field 'audio': {len(records) - len(paths)} of {len(records)} records have no "
                             f"kept audio, and '{kind}' features need it (monitor.keep_audio, or a vector feature kind)")
    from affectflow import audio
    from affectflow.serving.recognizer import Featurizer

    section = getattr(params.features, kind_spec(kind).setting, None)
    meta = SimpleNamespace(feature=kind, sample_rate=params.audio.sample_rate,
                           feature_config=section.model_dump(mode="json") if section is not None else {})
    featurize = Featurizer(meta)  # type: ignore[arg-type]
    return [featurize([audio.load(p, params.audio.sample_rate)])[0] for p in paths]


def with_log_target(params: Params, df: pd.DataFrame, features_dir: str | Path,
                    out_dir: str | Path) -> tuple[pd.DataFrame, Path, Params]:
    """(manifest + the log's rows, the derived store, params with the log corpus as a target)."""
    where = params.pretrain.target_log
    kind = feature_kind(params.train.model)
    fs = FeatureSet(features_dir)
    keys = sorted(set(fs.index.loc[fs.index["kind"] == kind, "key"].astype(str)))
    if len(keys) != 1:
        raise LogTargetError(f"{fs.root}: {len(keys)} '{kind}' configurations {keys}; need exactly one")
    records = read_log(where)
    records = records[(records["status"] == "ok") & records["moment_mean"].notna()].reset_index(drop=True)
    if records.empty:
        raise LogTargetError(f"{where}: no scored records (field 'status' ok) to adapt to")
    foreign = sorted(set(records["feature_key"].astype(str)) - set(keys))
    if foreign:
        raise LogTargetError(f"{where}: field 'feature_key': records of {foreign} are not the features this run "
                             f"trains on ({keys[0]}); point pretrain.target_log at the log of a model reading them")
    arrays = log_arrays(params, records, kind, where)
    shas = [hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest() for a in arrays]
    root = Path(out_dir) / LOG_STORE
    shard = write_shard(root, kind, keys[0], dict(zip(shas, arrays, strict=True)))
    own = fs.index.copy()
    own["file"] = [str((fs.root / f).resolve()) for f in own["file"]]  # absolute: Path(root) / file keeps it
    utt = [f"{LOG_CORPUS}/{i:06d}" for i in range(len(arrays))]
    added = pd.DataFrame({"utt_id": utt, "kind": kind, "key": keys[0], "file": shard.file,
                          "shape": [list(a.shape) for a in arrays], "member": shas, "shard_sha256": shard.sha256})
    write_index(root, pd.concat([own, added], ignore_index=True))
    rows = pd.DataFrame({c: [None] * len(utt) for c in df.columns})
    rows["utt_id"], rows["corpus"], rows["role"] = utt, LOG_CORPUS, "target"
    rows["speaker"] = [f"{LOG_CORPUS}/block{i // SESSION:04d}" for i in range(len(utt))]  # no speaker is logged
    rows["sha256"] = shas
    rows["split"] = ["val" if i % VAL_EVERY == VAL_EVERY - 1 else "train" for i in range(len(utt))]
    rows["emotion"] = ""
    if "fold" in rows:
        rows["fold"] = -1
    cfg = params.pretrain
    targets = [*cfg.target_corpora, LOG_CORPUS] if cfg.target_corpora else []
    adapted = params.model_copy(update={"pretrain": cfg.model_copy(update={"target_corpora": targets})})
    return pd.concat([df, rows.dropna(axis=1, how="all")], ignore_index=True), root, adapted
