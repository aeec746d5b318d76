"""What DANN may see: source and target rows, domain labels, and the input normalisation.

Source = labelled corpora (manifest role `source`), training split. Target = the unlabelled
adaptation corpora (`pretrain.target_corpora`, or every corpus whose role is `target`), and of
those only clips of their *training* speakers: a target corpus's test speakers are the cross-corpus
test set, so not even their unlabelled audio may shape the encoder (`assert_no_target_test`
enforces it on every set the stage builds). Validation speakers of every corpus are held out for
the domain probe (proxy A-distance) and the projection plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from affectflow.config import PretrainConfig
from affectflow.contracts.feature_store import FeatureSet
from affectflow.models.data import NormStats, compute_stats, normalize


class PretrainDataError(ValueError):
    """The manifest or features cannot feed DANN; the message names the file and the field."""


class TargetLeakageError(AssertionError):
    """A target corpus's test speaker (or a non-training clip of it) reached the adaptation data."""


@dataclass(frozen=True)
class Domains:
    """Corpora in domain-label order: sources first, then targets (both sorted by name)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [*self.sources, *self.targets]

    def labels(self, corpora: Sequence[str] | pd.Series) -> np.ndarray:
        """Domain index per row (one label per corpus); an unknown corpus is an error."""
        index = {c: i for i, c in enumerate(self.names)}
        unknown = sorted({str(c) for c in corpora} - set(index))
        if unknown:
            raise PretrainDataError(f"corpora {unknown} are neither a DANN source nor a target (domains {self.names})")
        return np.array([index[str(c)] for c in corpora], dtype=np.int64)

    def is_target(self, corpora: Sequence[str] | pd.Series) -> np.ndarray:
        return np.isin(np.asarray(corpora, dtype=object), list(self.targets))


def resolve_domains(df: pd.DataFrame, cfg: PretrainConfig, where: str | Path = "manifest") -> Domains:
    """Targets from `pretrain.target_corpora` (or role `target`), sources = role `source` minus those."""
    present = set(df["corpus"].astype(str))
    if cfg.target_corpora:
        missing = sorted(set(cfg.target_corpora) - present)
        if missing:
            raise PretrainDataError(f"{where}: pretrain.target_corpora names {missing}, but the manifest's "
                                    f"field 'corpus' has only {sorted(present)}")
        targets = sorted(set(cfg.target_corpora))
    else:
        targets = sorted(set(df.loc[df["role"] == "target", "corpus"].astype(str)))
    if not targets:
        raise PretrainDataError(f"{where}: no target corpus: set pretrain.target_corpora or give a corpus "
                                "role: target in ingest.corpora (field 'role')")
    sources = sorted(set(df.loc[df["role"] == "source", "corpus"].astype(str)) - set(targets))
    if not sources:
        raise PretrainDataError(f"{where}: no labelled source corpus besides the targets {targets} (field 'role')")
    return Domains(tuple(sources), tuple(targets))


def target_test_speakers(df: pd.DataFrame, domains: Domains) -> set[str]:
    return set(df.loc[domains.is_target(df["corpus"]) & (df["split"] == "test"), "speaker"].astype(str))


def assert_no_target_test(rows: pd.DataFrame, df: pd.DataFrame, domains: Domains, what: str) -> None:
    """Raise TargetLeakageError if a target test speaker, or a target clip outside `allowed` splits,
    is among `rows`. Called on every set the stage feeds to a model or a probe."""
    tgt = rows[domains.is_target(rows["corpus"])]
    leaked = sorted(set(tgt["speaker"].astype(str)) & target_test_speakers(df, domains))
    if leaked or (tgt["split"] == "test").any():
        raise TargetLeakageError(f"{what}: target test speakers {leaked[:5]} would reach DANN "
                                 "(only target training speakers may be used for adaptation)")


@dataclass
class RowSets:
    """Manifest rows per role in the stage (all with the manifest's columns)."""

    source_train: pd.DataFrame
    """Labelled: emotion head + domain head."""
    target_train: pd.DataFrame
    """Unlabelled (labels never read): domain head only."""
    source_val: pd.DataFrame
    """Labelled source validation speakers: monitoring only."""
    held_out: pd.DataFrame
    """Validation speakers of every domain: domain probe and projection."""
    classes: list[str]


def select_rows(df: pd.DataFrame, domains: Domains, classes: Sequence[str], where: str | Path = "manifest") -> RowSets:
    """Rows for each purpose; raises when a set DANN cannot do without is empty."""
    is_src = df["corpus"].isin(domains.sources)
    is_tgt = df["corpus"].isin(domains.targets)
    src_train = df[is_src & (df["split"] == "train")]
    present = [c for c in classes if c in set(src_train["emotion"])]
    if len(present) < 2:
        raise PretrainDataError(f"{where}: the source training split has {len(present)} of the classes "
                                f"{list(classes)} (field 'emotion'); need at least 2")
    src_train = src_train[src_train["emotion"].isin(present)]
    tgt_train = df[is_tgt & (df["split"] == "train")]
    empty = [t for t in domains.targets if not (tgt_train["corpus"] == t).any()]
    if empty:
        raise PretrainDataError(f"{where}: target corpora {empty} have no training-split speakers "
                                "(field 'split'); adaptation may use only those")
    src_val = df[is_src & (df["split"] == "val") & df["emotion"].isin(present)]
    held = df[(is_src & (df["split"] == "val") & df["emotion"].isin(present)) | (is_tgt & (df["split"] == "val"))]
    sets = RowSets(src_train, tgt_train, src_val, held, present)
    for name, rows in (("adaptation set", tgt_train), ("held-out set", held)):
        assert_no_target_test(rows, df, domains, f"{where}: {name}")
    return sets


def feature_key(fs: FeatureSet, kind: str, utt_ids: Sequence[str]) -> str:
    """The one feature configuration (store key) of these clips; mixed configurations are an error."""
    rows = fs.index[(fs.index["kind"] == kind) & fs.index["utt_id"].isin(list(utt_ids))]
    keys = sorted(set(rows["key"].astype(str)))
    if len(keys) > 1:
        raise PretrainDataError(f"{fs.root}: '{kind}' features come from {len(keys)} configurations {keys}; "
                                "re-run `affectflow features`")
    return keys[0] if keys else ""


@dataclass
class InputNorm:
    """The recognizer's normalisation (`base`: source training statistics, or per utterance) and,
    in `corpus` mode, each corpus standardised with statistics of its own adaptation clips."""

    mode: str
    base: NormStats
    per_corpus: dict[str, NormStats] = field(default_factory=dict)

    def stats_for(self, corpus: str) -> NormStats:
        if self.mode == "corpus" and self.base.mode == "global":
            try:
                return self.per_corpus[corpus]
            except KeyError:
                raise PretrainDataError(f"pretrain.normalize=corpus: no statistics for corpus '{corpus}' "
                                        f"(have {sorted(self.per_corpus)})") from None
        return self.base

    def apply(self, arrays: Sequence[np.ndarray], corpora: Sequence[str]) -> list[np.ndarray]:
        return [normalize(a, self.stats_for(str(c))) for a, c in zip(arrays, corpora, strict=True)]

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "base": self.base.as_dict(),
                "per_corpus": {c: s.as_dict() for c, s in sorted(self.per_corpus.items())}}


def fit_norm(mode: str, base_mode: str, source_arrays: Sequence[np.ndarray],
             adaptation: dict[str, Sequence[np.ndarray]]) -> InputNorm:
    """`base_mode` is the recognizer's (global, or utterance for log-mel); per-corpus statistics come
    from each corpus's adaptation clips only (source: training split, target: training speakers)."""
    base = compute_stats(source_arrays, base_mode)
    per = {}
    if mode == "corpus" and base_mode == "global":
        per = {c: compute_stats(arrs, "global") for c, arrs in adaptation.items()}
    return InputNorm(mode=mode, base=base, per_corpus=per)


def probe_vectors(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Fixed-size view of (normalised) input features for the "input space" probe: vectors as they
    are, frame matrices as per-band mean and standard deviation over time."""
    if not arrays:
        return np.zeros((0, 0), np.float32)
    if arrays[0].ndim == 1:
        return np.stack(arrays).astype(np.float32)
    return np.stack([np.concatenate([a.mean(axis=-1), a.std(axis=-1)]) for a in arrays]).astype(np.float32)
