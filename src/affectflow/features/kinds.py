"""The feature kinds, as a table: the one place that knows what each kind of the store is.

A row (`FeatureKind`) says how a kind is asked for (`setting`), which engine computes it, what its
arrays look like, what its cache key and its model-folder configuration hold, how to build its
extractor on a device, what a served model needs for it (pip requirements, files carried with the
model) and what a model reading it learns from its settings (`facts`: the `ssl` kind's layer
count). Keys, the features stage, validate, training, the featurizer and the pyfunc look a kind up
here instead of comparing its name. `docs/ARCHITECTURE.md` ("Add a feature kind") traces a row.

Heavy libraries (torch, openSMILE, transformers) are imported inside the row functions: reading the
table costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from affectflow.config import EgemapsConfig, FeaturesConfig, LogMelConfig, SslConfig
from affectflow.features import egemaps as eg
from affectflow.features.robustness import split_kind

SSL = "ssl"
LOGMEL = "logmel"
LOGMEL_VERSION = 1
"""Bump when `LogMel` changes values for the same configuration: it is part of the cache key."""

Extractor = Callable[[Sequence[np.ndarray]], list[np.ndarray]]
"""Waveforms at the model's rate -> one array per waveform."""


@dataclass(frozen=True)
class Shape:
    """What every array of a kind must look like (the validate gate checks it)."""

    ndim: int
    dim0: int | None
    """First dimension; None: whatever most clips have (they must agree)."""
    dim0_name: str
    """What sets it, for the gate's report."""


@dataclass(frozen=True)
class FeatureKind:
    """One store kind."""

    name: str
    engine: Literal["logmel", "smile", "ssl"]
    """logmel: torch STFT (`features/logmel.py`); smile: openSMILE (`features/egemaps.py`, one
    decode feeds every openSMILE kind); ssl: a pretrained encoder (`features/ssl.py`). The features
    stage schedules each engine its own way (workers, main process, encoder first)."""
    frame_level: bool
    """(dim, frames) arrays of varying length, rather than one fixed-size vector per clip: the
    layout in the store, crops in training, per-utterance normalisation."""
    setting: str
    """The `features.kinds` entry that asks for it (eGeMAPS levels come from `features.egemaps.levels`)."""
    config: Callable[[FeaturesConfig, str], dict[str, Any]]
    """The settings a model folder stores (`feature_config`): all its extractor needs."""
    key: Callable[[FeaturesConfig, int, str], dict[str, Any]]
    """What changes its values (hashed into the cache key), for a sample rate."""
    extractor: Callable[[dict[str, Any], int, Any, str], Extractor]
    """(stored configuration, sample rate, device, kind) -> the extractor."""
    shape: Callable[[FeaturesConfig, str], Shape]
    requirements: Callable[[], list[str]]
    """pip requirements of a served model reading it (beyond the recognizer's own)."""
    carried_files: Callable[[dict[str, Any]], Path | None] = field(default=lambda config: None)
    """The local folder a served model of this kind carries with it (a checkpoint), for its stored
    configuration; None: nothing to carry."""
    carried_setting: str | None = None
    """The `feature_config` entry the carried folder replaces where the model is served."""
    facts: Callable[[FeaturesConfig], dict[str, Any]] = field(default=lambda cfg: {})
    """What a model reading this kind takes from its settings (`ModelSpec.feature_facts`)."""

    def normalization(self, normalize: str) -> Literal["global", "utterance"]:
        """The statistics `train.normalize` (or `pretrain`'s) fits for this kind: per utterance only
        for frame-level arrays; `corpus` is global statistics per corpus (computed by the caller)."""
        return "utterance" if normalize == "utterance" and self.frame_level else "global"


# ----------------------------------------------------------------------------- log-mel
def _logmel_key(cfg: FeaturesConfig, sample_rate: int, kind: str) -> dict[str, Any]:
    return {**cfg.logmel.model_dump(mode="json"), "sample_rate": sample_rate, "version": LOGMEL_VERSION}


def _logmel_extractor(config: dict[str, Any], sample_rate: int, device: Any, kind: str) -> Extractor:
    from affectflow.features.logmel import LogMel

    mel = LogMel(LogMelConfig.model_validate(config), sample_rate, device)
    return lambda waves: mel.batch([np.asarray(w, np.float32) for w in waves])


# ----------------------------------------------------------------------------- openSMILE
def _smile_extractor(config: dict[str, Any], sample_rate: int, device: Any, kind: str) -> Extractor:
    smile = eg.Egemaps(EgemapsConfig.model_validate(config), [kind])
    return lambda waves: [smile(np.asarray(w, np.float32), sample_rate, [kind])[kind] for w in waves]


def _smile_shape(cfg: FeaturesConfig, kind: str) -> Shape:
    """A recording-condition copy has its clean kind's shape."""
    base = split_kind(kind)[0]
    frame_level = KINDS[base].frame_level
    dims = smile_dims(cfg.egemaps.feature_set, tuple(cfg.egemaps.levels), base)
    what = "low-level descriptors" if frame_level else "functionals"
    feature_set = eg.kind_config(cfg.egemaps, base)["feature_set"]
    return Shape(2 if frame_level else 1, dims.get(base), f"{feature_set} {what}")


@functools.cache
def smile_dims(feature_set: str, levels: tuple[str, ...], kind: str) -> dict[str, int]:
    """Features of an openSMILE kind (88 eGeMAPSv02 functionals, 25 LLDs, 6373 ComParE...), asked
    of openSMILE itself. Cached: building the extractors parses openSMILE's config files. Empty if
    openSMILE is missing, and then the gate only asks that all clips agree."""
    try:
        return eg.Egemaps(EgemapsConfig(feature_set=feature_set, levels=list(levels)), [kind]).dims()
    except Exception:  # no opensmile: fall back to "all clips agree"
        return {}


# ----------------------------------------------------------------------------- pretrained encoder
def _ssl_config(config: dict[str, Any]) -> SslConfig:
    """A model folder's `ssl` configuration (it also stores `checkpoint_sha`, not a setting)."""
    return SslConfig.model_validate({k: v for k, v in config.items() if k in SslConfig.model_fields})


def _ssl_settings(cfg: FeaturesConfig, kind: str) -> dict[str, Any]:
    from affectflow.features.ssl import checkpoint_hash

    return {**cfg.ssl.model_dump(mode="json"), "checkpoint_sha": checkpoint_hash(cfg.ssl)}


def _ssl_key(cfg: FeaturesConfig, sample_rate: int, kind: str) -> dict[str, Any]:
    from affectflow.features.ssl import key_config  # torch / transformers only when asked

    return key_config(cfg.ssl, sample_rate)


def _ssl_extractor(config: dict[str, Any], sample_rate: int, device: Any, kind: str) -> Extractor:
    from affectflow.features.ssl import SslCheckpointError, SslEncoder, checkpoint_hash

    cfg = _ssl_config(config)
    want = config.get("checkpoint_sha")
    if want and checkpoint_hash(cfg) != want:
        raise SslCheckpointError(f"features.ssl.checkpoint {cfg.checkpoint}: its files differ from the encoder "
                                 f"this model was trained on (content hash {want})")
    encoder = SslEncoder(cfg, sample_rate, device)
    return lambda waves: encoder([np.asarray(w, np.float32) for w in waves])


def _ssl_carried(config: dict[str, Any]) -> Path | None:
    """The encoder's local folder (a hub id in the offline cache is not carried)."""
    from affectflow.features.ssl import local_checkpoint

    where = local_checkpoint(_ssl_config(config))
    return where if isinstance(where, Path) else None


def _ssl_facts(cfg: FeaturesConfig) -> dict[str, Any]:
    """The stored layers (`n_layers`), which of the encoder's hidden states they are (`states`) and
    how many the encoder has (`encoder_states`), so `ssl_linear`'s `middle` is the encoder's middle."""
    from affectflow.features.ssl import kept_states

    states, total = kept_states(cfg.ssl)
    return {"n_layers": len(states), "states": states, "encoder_states": total}


def _version_of(module: str) -> str:
    return str(__import__(module).__version__)


KINDS: dict[str, FeatureKind] = {k.name: k for k in (
    FeatureKind(LOGMEL, "logmel", True, LOGMEL,
                config=lambda cfg, kind: cfg.logmel.model_dump(mode="json"), key=_logmel_key,
                extractor=_logmel_extractor,
                shape=lambda cfg, kind: Shape(2, cfg.logmel.n_mels, "features.logmel.n_mels"),
                requirements=lambda: []),
    *(FeatureKind(kind, "smile", frame_level, setting,
                  config=lambda cfg, kind: eg.kind_config(cfg.egemaps, kind),
                  key=lambda cfg, sr, kind: eg.key_config(cfg.egemaps, sr, kind),
                  extractor=_smile_extractor, shape=_smile_shape, requirements=lambda: ["opensmile"])
      for kind, frame_level, setting in ((eg.LEVEL_KINDS["functionals"], False, "egemaps"),
                                         (eg.LEVEL_KINDS["lld"], True, "egemaps"),
                                         (eg.COMPARE, False, eg.COMPARE))),
    FeatureKind(SSL, "ssl", False, SSL, config=_ssl_settings, key=_ssl_key, extractor=_ssl_extractor,
                shape=lambda cfg, kind: Shape(1, None, "pretrained encoder layers"),  # layers x hidden size
                requirements=lambda: [f"transformers=={_version_of('transformers')}"],
                carried_files=_ssl_carried, carried_setting="checkpoint", facts=_ssl_facts),
)}
"""Every store kind (clean audio; `<kind>@r<k>` recording-condition copies are openSMILE kinds'
copies, `features.robustness`)."""


def kind_spec(kind: str) -> FeatureKind:
    """The table row of a store kind or of its recording-condition copy."""
    base = split_kind(kind)[0]
    try:
        return KINDS[base]
    except KeyError:
        raise ValueError(f"unknown feature kind '{kind}' (known: {sorted(KINDS)})") from None
