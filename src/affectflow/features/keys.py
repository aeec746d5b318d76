"""Which kinds `params.features` asks for and their cache keys: the hash that names each kind's
configuration in the store (and in model.json). The kinds themselves are the table in
`affectflow.features.kinds` (re-exported here)."""

from __future__ import annotations

from collections.abc import Iterable

from affectflow.config import Params
from affectflow.contracts.feature_store import feature_key
from affectflow.features import egemaps as eg
from affectflow.features.kinds import KINDS, LOGMEL, LOGMEL_VERSION, SSL, FeatureKind, kind_spec
from affectflow.features.robustness import copy_kind, split_kind


def requested_kinds(params: Params, settings: Iterable[str] | None = None) -> list[str]:
    """Store kinds for `features.kinds`-style `settings` (default: `params.features.kinds`, which
    the runner fills with what the enabled stages read), in a stable order, with their
    recording-condition copies (`features.robustness.copies`)."""
    kinds: list[str] = []
    for setting in dict.fromkeys(params.features.kinds if settings is None else settings):
        rows = [k.name for k in KINDS.values() if k.setting == setting]
        if len(rows) > 1:  # a setting with several kinds (eGeMAPS): the levels `features.egemaps.levels` lists
            kinds += [k for k in eg.kinds_for(params.features.egemaps) if k in rows]
        elif rows:
            kinds += rows
        else:  # a store kind itself, e.g. a recording-condition copy (an unknown name raises)
            kinds.append(kind_spec(setting).name and setting)
    copies = params.features.robustness.copies
    clean = [k for k in kinds if split_kind(k)[1] == 0 and KINDS[k].engine == "smile"]
    return list(dict.fromkeys(kinds + [copy_kind(k, i) for i in range(1, copies + 1) for k in clean]))


ROBUSTNESS_VERSION = 1
"""Bump when `affectflow.features.robustness` changes the audio of a copy: part of its cache key."""


def kind_config(params: Params, kind: str) -> dict[str, object]:
    """The settings of one kind, as a model folder stores them (`feature_config`); a recording-
    condition copy has its clean kind's (a model applies to clean audio)."""
    return kind_spec(kind).config(params.features, split_kind(kind)[0])


def feature_keys(params: Params) -> dict[str, str]:
    """kind -> config hash covering everything that changes its values (not device, workers, ...)."""
    sr = params.audio.sample_rate
    keys: dict[str, str] = {}
    for kind in requested_kinds(params):
        base, k = split_kind(kind)
        cfg = kind_spec(kind).key(params.features, sr, base)
        if k:  # the copy's audio: the condition settings (not how many copies) and its number
            rob = params.features.robustness.model_dump(mode="json", exclude={"copies"})
            cfg = {**cfg, "robustness": rob, "copy": k, "robustness_version": ROBUSTNESS_VERSION}
        keys[kind] = feature_key(kind, cfg)
    return keys


__all__ = ["KINDS", "LOGMEL", "LOGMEL_VERSION", "ROBUSTNESS_VERSION", "SSL", "FeatureKind", "feature_keys",
           "kind_config", "kind_spec", "requested_kinds"]
