"""Feature kinds and their cache keys: which arrays params.features asks for, and the hash that
names each kind's configuration in the store (and in model.json)."""

from __future__ import annotations

from affectflow.config import Params
from affectflow.contracts.feature_store import feature_key
from affectflow.features import egemaps as eg
from affectflow.features.robustness import copy_kind, split_kind

SSL = "ssl"

LOGMEL = "logmel"
LOGMEL_VERSION = 1
"""Bump when `LogMel` changes values for the same configuration: it is part of the cache key."""


def requested_kinds(params: Params) -> list[str]:
    """Store kinds that params.features asks for, in a stable order."""
    kinds: list[str] = []
    for k in dict.fromkeys(params.features.kinds):
        if k in (LOGMEL, SSL, eg.COMPARE):
            kinds.append(k)
        else:
            kinds += eg.kinds_for(params.features.egemaps)
    copies = params.features.robustness.copies
    return kinds + [copy_kind(k, i) for i in range(1, copies + 1) for k in kinds if k in eg.SMILE_KINDS]


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
