"""Feature kinds and their cache keys: which arrays params.features asks for, and the hash that
names each kind's configuration in the store (and in model.json)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from affectflow.config import Params
from affectflow.contracts.feature_store import feature_key
from affectflow.features import egemaps as eg
from affectflow.features.robustness import copy_kind, split_kind

SSL = "ssl"

LOGMEL = "logmel"
LOGMEL_VERSION = 1
"""Bump when `LogMel` changes values for the same configuration: it is part of the cache key."""


@dataclass(frozen=True)
class FeatureKind:
    """One store kind: which extractor computes it and what its arrays look like."""

    name: str
    engine: Literal["logmel", "smile", "ssl"]
    """logmel: torch STFT (`features/logmel.py`); smile: openSMILE (`features/egemaps.py`, one
    decode feeds every openSMILE kind); ssl: a pretrained encoder (`features/ssl.py`)."""
    frame_level: bool
    """(dim, frames) arrays of varying length, rather than one fixed-size vector per clip."""
    setting: str
    """The `features.kinds` entry that asks for it (eGeMAPS levels come from `features.egemaps.levels`)."""


KINDS: dict[str, FeatureKind] = {k.name: k for k in (
    FeatureKind(LOGMEL, "logmel", True, LOGMEL),
    FeatureKind(eg.LEVEL_KINDS["functionals"], "smile", False, "egemaps"),
    FeatureKind(eg.LEVEL_KINDS["lld"], "smile", True, "egemaps"),
    FeatureKind(eg.COMPARE, "smile", False, eg.COMPARE),
    FeatureKind(SSL, "ssl", False, SSL),
)}
"""Every store kind (clean audio; `<kind>@r<k>` recording-condition copies are openSMILE kinds'
copies): the one table code looks kinds up in instead of comparing names."""


def kind_spec(kind: str) -> FeatureKind:
    """The table row of a store kind or of its recording-condition copy."""
    base = split_kind(kind)[0]
    try:
        return KINDS[base]
    except KeyError:
        raise ValueError(f"unknown feature kind '{kind}' (known: {sorted(KINDS)})") from None


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
    kind = split_kind(kind)[0]
    if kind == LOGMEL:
        return params.features.logmel.model_dump(mode="json")
    if kind in eg.SMILE_KINDS:
        return eg.kind_config(params.features.egemaps, kind)
    if kind == SSL:
        from affectflow.features.ssl import checkpoint_hash

        return {**params.features.ssl.model_dump(mode="json"), "checkpoint_sha": checkpoint_hash(params.features.ssl)}
    return {}


def feature_keys(params: Params) -> dict[str, str]:
    """kind -> config hash covering everything that changes its values (not device, workers, ...)."""
    sr = params.audio.sample_rate
    keys: dict[str, str] = {}
    for kind in requested_kinds(params):
        if kind == LOGMEL:
            cfg = {**params.features.logmel.model_dump(mode="json"), "sample_rate": sr, "version": LOGMEL_VERSION}
        elif kind == SSL:
            from affectflow.features.ssl import key_config  # torch / transformers only when asked

            cfg = key_config(params.features.ssl, sr)
        else:
            base, k = split_kind(kind)
            cfg = eg.key_config(params.features.egemaps, sr, base)
            if k:  # the copy's audio: the condition settings (not how many copies) and its number
                rob = params.features.robustness.model_dump(mode="json", exclude={"copies"})
                cfg = {**cfg, "robustness": rob, "copy": k, "robustness_version": ROBUSTNESS_VERSION}
        keys[kind] = feature_key(kind, cfg)
    return keys
