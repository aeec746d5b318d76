"""Training, step 1 (driver): choose rows, classes and normalisation, name the run, and write down
everything the workers need as one typed, picklable `WorkerConfig`.

Honest numbers start here: only the manifest's training split feeds the statistics and the
weights, validation speakers pick the checkpoint, and the test split is never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectflow.config import Params, TrainConfig
from affectflow.contracts.feature_store import FeatureSet
from affectflow.contracts.manifest import read_manifest
from affectflow.contracts.model_folder import (
    DeployNormalization,
    DimensionFacts,
    ModelMeta,
    TrainFacts,
    corpus_normalization,
    read_model_meta,
)
from affectflow.contracts.synthetic import read_synthetic, synthetic_file
from affectflow.corpora.dimensions import dimension_targets, labelled_dimensions
from affectflow.features.keys import feature_keys, kind_config, kind_spec
from affectflow.models import arch_config, feature_kind
from affectflow.models.data import NormStats, compute_stats
from affectflow.stages.train.shared import checkpoint_root, run_folder
from affectflow.tracking import lineage as lineage_tags

RUNTIME_KEYS = ("num_workers", "device", "threads", "checkpoints_to_keep", "stop_after_epochs", "max_failures",
                "deploy_normalize", "deploy_min_clips", "deploy_window", "checkpoint_dir")
"""train.* settings that change how a run executes or how its model is later applied, not what
training computes (excluded from the run name)."""
SYNTHETIC_KEYS = ("synthetic_weight", "synthetic_schedule", "synthetic_fade_fraction")
"""train.* settings that act on synthetic rows only: in the run name only with synthetic rows and
when not at their defaults, so runs named before these settings existed keep their names."""


LATER_KEYS = ("corpus_balance", "checkpoint", "robustness_copies", "ssl_linear")
"""train.* settings added after runs were cached: in the run name only when not at their default."""


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message names the file and the field."""


@dataclass(frozen=True)
class SyntheticRows:
    """The synthetic rows a run adds: which rows of which file, with labels in the run's classes."""

    path: str
    rows: list[int]
    y: list[int]
    sha256: str


@dataclass(frozen=True)
class WorkerConfig:
    """Everything `train_loop_per_worker` needs, as plain data (Ray ships it to every worker)."""

    train: TrainConfig
    arch: str
    arch_config: dict[str, Any]
    classes: list[str]
    feature: str
    input_dim: int
    features_dir: str
    train_ids: list[str]
    train_y: list[int]
    train_corpora: list[str]
    val_ids: list[str]
    val_y: list[int]
    val_corpora: list[str]
    stats: dict[str, Any]
    stats_per_corpus: dict[str, dict[str, Any]]
    pretrained: str | None
    synthetic: SyntheticRows | None
    ckpt_dir: str
    """This process's folder of the run's checkpoints (the run folder itself, or its local mirror)."""
    local_mode: bool
    mlflow: dict[str, str] | None = None
    storage: str = ""
    """Checkpoint root (`shared.checkpoint_root`): Ray Train's storage_path."""
    ckpt_uri: str | None = None
    """The run's s3:// checkpoint folder that `ckpt_dir` mirrors (None: `ckpt_dir` is durable)."""
    inputs: str | None = None
    """The inputs pack remote Ray workers read (`shared.stage_inputs`); None: the local folders."""
    robustness_copies: int = 0
    """Recording-condition copies of every training clip (`<feature>@r<k>`, k = 1..N) to add; their
    statistics are `stats_per_corpus["<corpus>@r<k>"]` (with train.normalize: corpus)."""
    dimension_names: list[str] = dataclass_field(default_factory=list)
    """Outputs of the dimensional head (empty: none, `train.dimension_weight: 0`)."""
    train_dims: list[list[float]] = dataclass_field(default_factory=list)
    """Per training row, its targets in `dimension_names` order on [-1, 1] (NaN: none)."""
    val_dims: list[list[float]] = dataclass_field(default_factory=list)

    def with_mlflow(self, info: dict[str, str]) -> WorkerConfig:
        from dataclasses import replace

        return replace(self, mlflow=info)


@dataclass
class Plan:
    worker: WorkerConfig
    run_name: str
    meta: ModelMeta


def split_rows(params: Params, df: pd.DataFrame, manifest: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Labelled training and validation rows, and the classes the training split has."""
    src = df[df["role"] == "source"] if "role" in df.columns else df
    tr = src[src["split"] == "train"]
    classes = [c for c in params.ingest.classes if c in set(tr["emotion"])]
    if len(classes) < 2:
        raise TrainingError(f"{manifest}: the training split has {len(classes)} of the classes "
                            f"{params.ingest.classes} (field 'emotion'); need at least 2")
    tr = tr[tr["emotion"].isin(classes)]
    va = src[(src["split"] == "val") & src["emotion"].isin(classes)]
    if va.empty and params.train.checkpoint == "best_val":
        raise TrainingError(f"{manifest}: no validation rows (field 'split' == 'val'); early stopping and "
                            "checkpoint selection need validation speakers (splits.val_fraction)")
    return tr, va, classes


def _feature_key(fs: FeatureSet, kind: str, ids: list[str]) -> str:
    rows = fs.index[(fs.index["kind"] == kind) & fs.index["utt_id"].isin(ids)]
    keys = sorted(set(rows["key"].astype(str)))
    if len(keys) > 1:
        raise TrainingError(f"{fs.root}: '{kind}' features of the training clips come from {len(keys)} "
                            f"configurations {keys}; re-run `affectflow features`")
    return keys[0] if keys else ""


def _check_feature_key(params: Params, kind: str, key: str, root: Path) -> None:
    """The features must come from params.features: model.json stores that configuration, and the
    pyfunc recomputes features from audio with it."""
    f = params.features
    want = feature_keys(params.model_copy(update={"features": f.model_copy(update={"kinds": [kind]})})).get(kind)
    if want and key != want:
        raise TrainingError(f"{root}: '{kind}' features have configuration key '{key}' but params.features "
                            f"(with audio.sample_rate) give '{want}'; re-run `affectflow features` with these params")


def _check_pretrained(path: str | Path, arch: str, kind: str, cfg: dict[str, Any], input_dim: int) -> ModelMeta:
    meta = read_model_meta(path)
    where = f"{Path(path) / 'model.json'}"
    for field, have, want in (("arch", meta.arch, arch), ("feature", meta.feature, kind),
                              ("arch_config", meta.arch_config, cfg), ("input_dim", meta.input_dim, input_dim)):
        if have != want:
            raise TrainingError(f"{where}: field '{field}' is {have!r} but this run needs {want!r}")
    return meta


def select_synthetic(path: str | Path, kind: str, classes: list[str], train_y: np.ndarray,
                     tc: TrainConfig) -> SyntheticRows | None:
    """Rows of an augment output to add: kept samples of our classes, `synthetic_ratio` per real
    training sample, spent on the smallest classes first with `balance_minority`."""
    if tc.synthetic_ratio <= 0:
        return None
    f = synthetic_file(path)
    try:
        syn = read_synthetic(f, kept_only=False)
    except FileNotFoundError:
        raise TrainingError(f"{f}: synthetic set not found (train.synthetic_ratio > 0)") from None
    if syn.feature != kind:
        raise TrainingError(f"{f}: field 'feature' is '{syn.feature}' but train.model reads '{kind}'")
    to_ours = np.array([classes.index(c) if c in classes else -1 for c in syn.classes])
    y = to_ours[syn.y]
    ok = np.flatnonzero(syn.kept & (y >= 0))
    budget = min(round(tc.synthetic_ratio * len(train_y)), len(ok))
    rng = np.random.default_rng([tc.seed, 7])
    if tc.balance_minority:
        counts = np.bincount(train_y, minlength=len(classes)).astype(float)
        pools = {c: list(rng.permutation(ok[y[ok] == c])) for c in range(len(classes))}
        rows: list[int] = []
        for _ in range(budget):  # water-filling: one sample to the currently smallest class with stock
            open_ = [c for c in range(len(classes)) if pools[c]]
            if not open_:
                break
            c = min(open_, key=lambda k: counts[k])
            rows.append(int(pools[c].pop()))
            counts[c] += 1
        chosen = np.array(sorted(rows), dtype=np.int64)
    else:
        chosen = np.sort(rng.choice(ok, size=budget, replace=False)) if budget else np.zeros(0, np.int64)
    return SyntheticRows(path=str(f.resolve()), rows=chosen.tolist(), y=y[chosen].tolist(),
                         sha256=hashlib.sha256(f.read_bytes()).hexdigest()[:16])


def check_robustness(params: Params, fs: FeatureSet, kind: str, ids: list[str]) -> list[str]:
    """The copy kinds `train.robustness_copies` asks for, present for every training clip."""
    from affectflow.features import egemaps as eg
    from affectflow.features.robustness import copy_kind

    n = params.train.robustness_copies
    if not n:
        return []
    if kind not in eg.SMILE_KINDS:
        raise TrainingError(f"train.robustness_copies: recording-condition copies exist for the openSMILE kinds "
                            f"{list(eg.SMILE_KINDS)}; train.model {params.train.model} reads '{kind}'")
    if n > params.features.robustness.copies:
        raise TrainingError(f"train.robustness_copies is {n} but features.robustness.copies is "
                            f"{params.features.robustness.copies}; compute more copies in the features stage")
    kinds = [copy_kind(kind, k) for k in range(1, n + 1)]
    for ck in kinds:
        have = set(fs.index.loc[fs.index["kind"] == ck, "utt_id"].astype(str))
        lacking = [i for i in ids if i not in have]
        if lacking:
            raise TrainingError(f"{fs.root}: no '{ck}' features for {len(lacking)} training clips (e.g. "
                                f"{lacking[0]}); re-run `affectflow features` with features.robustness.copies >= {n}")
        _check_feature_key(params, ck, _feature_key(fs, ck, ids), fs.root)
    return kinds


def dimension_plan(tc: TrainConfig, df: pd.DataFrame, tr: pd.DataFrame,
                   va: pd.DataFrame) -> tuple[dict[str, Any], DimensionFacts | None]:
    """The dimensional head's outputs and the targets of the training / validation rows (each
    corpus's labelled columns rescaled over its rows in the whole manifest, `corpora.dimensions`),
    or nothing with `train.dimension_weight: 0`."""
    if tc.dimension_weight <= 0:
        return {}, None
    names = labelled_dimensions(tr)
    targets = dimension_targets(df, names)
    pos = pd.Series(np.arange(len(df)), index=df.index)
    rows = {k: targets.values[pos[part.index].to_numpy()] for k, part in (("train", tr), ("val", va))}
    sources = {c: s for c, s in targets.sources.items() if c in set(tr["corpus"].astype(str))}
    facts = DimensionFacts(names=names, weak_labels=any(v == "weak" for s in sources.values() for v in s.values()),
                           sources=sources, loss_weight=tc.dimension_weight)
    return {"dimension_names": names, "train_dims": rows["train"].tolist(), "val_dims": rows["val"].tolist()}, facts


def run_name(tc: TrainConfig, identity: dict[str, Any], with_synthetic: bool) -> str:
    """`<model>-<hash>` of what the run computes (not how it executes): the same command resumes,
    a changed one starts afresh."""
    default = TrainConfig().model_dump(mode="json")
    settings = {k: v for k, v in tc.model_dump(mode="json").items() if k not in RUNTIME_KEYS
                and not (k in SYNTHETIC_KEYS and (not with_synthetic or v == default[k]))
                and not (k in LATER_KEYS and v == default[k])}
    what = {"train": settings, **identity}
    return f"{tc.model}-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]}"


def plan(params: Params, manifest: str | Path, features_dir: str | Path, out_dir: str | Path,
         pretrained: str | Path | None = None, synthetic: str | Path | None = None) -> Plan:
    """Choose rows, classes and normalisation (training split only) and name the run."""
    tc = params.train
    df = read_manifest(manifest)
    tr, va, classes = split_rows(params, df, manifest)
    kind = feature_kind(tc.model)
    fs = FeatureSet(features_dir)
    train_ids, val_ids = tr["utt_id"].tolist(), va["utt_id"].tolist()
    arrays = fs.load(kind, train_ids, mmap=True)
    input_dim = int(arrays[0].shape[0])
    acfg = arch_config(tc, kind_spec(kind).facts(params.features))
    pre_meta = _check_pretrained(pretrained, tc.model, kind, acfg, input_dim) if pretrained else None
    mode = kind_spec(kind).normalization(tc.normalize)
    if pre_meta and pre_meta.normalization.get("mode") == mode:
        stats = NormStats.from_dict(pre_meta.normalization)  # the encoder was trained on these
    else:
        stats = compute_stats(arrays, mode)
    per_corpus, deploy_corpus = corpus_normalization(pre_meta.pretrain if pre_meta else None)
    corpora = tr["corpus"].astype(str).to_numpy()
    if tc.normalize == "corpus" and not per_corpus:
        per_corpus = {c: compute_stats([a for a, k in zip(arrays, corpora, strict=True) if k == c], "global").as_dict()
                      for c in sorted(set(corpora))}
    copy_kinds = check_robustness(params, fs, kind, train_ids)
    copy_keys = {ck: _feature_key(fs, ck, train_ids) for ck in copy_kinds}
    copy_stats: dict[str, dict[str, Any]] = {}  # each (corpus, copy) is a recording condition of its own
    for k, ck in enumerate(copy_kinds if tc.normalize == "corpus" else [], start=1):
        copies = fs.load(ck, train_ids, mmap=True)
        copy_stats |= {f"{c}@r{k}": compute_stats([a for a, g in zip(copies, corpora, strict=True) if g == c],
                                                  "global").as_dict() for c in sorted(set(corpora))}
        del copies
    per_corpus = {**per_corpus, **copy_stats}
    deploy = DeployNormalization(
        mode="running" if tc.deploy_normalize == "running" or (tc.deploy_normalize == "auto" and tc.normalize == "corpus")
        else "pooled", min_clips=tc.deploy_min_clips, window=tc.deploy_window)
    del arrays
    y_of = {c: i for i, c in enumerate(classes)}
    train_y = tr["emotion"].map(y_of).to_numpy()
    dims, dim_facts = dimension_plan(tc, df, tr, va)
    syn = select_synthetic(synthetic, kind, classes, train_y, tc) if synthetic else None
    feature_cfg = kind_config(params, kind)
    key = _feature_key(fs, kind, train_ids + val_ids)
    _check_feature_key(params, kind, key, fs.root)
    name = run_name(tc, {
        "classes": classes, "train_ids": train_ids, "val_ids": val_ids, "feature_key": key,
        "stats": stats.as_dict(), "pretrained": pre_meta and pre_meta.lineage,
        **({"robustness_keys": copy_keys} if copy_keys else {}),
        "synthetic": syn and {"sha256": syn.sha256, "rows": syn.rows}}, with_synthetic=bool(syn))
    root = checkpoint_root(params)
    ckpt_uri, local_ckpt = run_folder(root, name)
    worker = WorkerConfig(
        train=tc, arch=tc.model, arch_config=acfg, classes=classes, feature=kind, input_dim=input_dim,
        features_dir=str(Path(features_dir).resolve()), train_ids=train_ids, train_y=train_y.tolist(),
        train_corpora=tr["corpus"].astype(str).tolist(), val_ids=val_ids,
        val_y=va["emotion"].map(y_of).tolist(), val_corpora=va["corpus"].astype(str).tolist(),
        stats=stats.as_dict(), stats_per_corpus=per_corpus,
        pretrained=str(Path(pretrained).resolve()) if pretrained else None, synthetic=syn,
        ckpt_dir=local_ckpt, ckpt_uri=ckpt_uri if ckpt_uri != local_ckpt else None, storage=root,
        local_mode=tc.num_workers == 0, robustness_copies=len(copy_kinds), **dims)
    lineage = {**lineage_tags.lineage(params, df, manifest, features_dir, sections=("features", "audio", "train")),
               "run_name": name, "pretrained": str(pretrained or ""), "synthetic": syn.sha256 if syn else ""}
    meta = ModelMeta(
        arch=tc.model, classes=classes, feature=kind, feature_config=feature_cfg, feature_key=key,
        audio=params.audio.model_dump(mode="json"), normalization=stats.as_dict(),
        normalization_per_corpus={c: v for c, v in per_corpus.items() if c not in copy_stats},
        deploy_corpus=deploy_corpus, deploy_normalization=deploy,
        arch_config=acfg,
        input_dim=input_dim, lineage={k: str(v) for k, v in lineage.items()},
        train=TrainFacts(corpora=sorted(set(tr["corpus"])), n_train=len(train_ids), n_val=len(val_ids),
                         n_synthetic=len(syn.rows) if syn else 0, train_speakers=sorted(set(tr["speaker"])),
                         val_speakers=sorted(set(va["speaker"]))),
        pretrain=pre_meta.pretrain if pre_meta else None, dimensions=dim_facts)
    return Plan(worker=worker, run_name=name, meta=meta)
