"""openSMILE acoustic parameters on an already-decoded waveform: eGeMAPS functionals (`egemaps`,
88) and low-level descriptors (`egemaps_lld`, 25 x frames), and the ComParE 2016 functionals
(`compare`, 6373: the large brute-force set, which transfers across corpora better than eGeMAPS's
88 in the leave-one-corpus-out study, benchmarks/RESULTS.md).

Why on a waveform: the features stage decodes and resamples each clip once and hands the same
signal to both log-mel and openSMILE (`Smile.process_signal`), instead of letting openSMILE read
the file again. One `Egemaps` object lives in each worker process and is reused for every clip
(openSMILE's Python wrapper is not shareable across processes).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import version
from typing import Any

import numpy as np

from affectflow.config import EgemapsConfig

LEVEL_KINDS = {"functionals": "egemaps", "lld": "egemaps_lld"}
"""params.features.egemaps.levels -> feature kind in the store."""
COMPARE = "compare"
COMPARE_SET = "ComParE_2016"
SMILE_KINDS = (*LEVEL_KINDS.values(), COMPARE)
"""Every store kind openSMILE computes."""

_SMILE_LEVELS = {"functionals": "Functionals", "lld": "LowLevelDescriptors"}


def kinds_for(cfg: EgemapsConfig) -> list[str]:
    return [LEVEL_KINDS[level] for level in dict.fromkeys(cfg.levels)]


def _set_and_level(cfg: EgemapsConfig, kind: str) -> tuple[str, str]:
    if kind == COMPARE:
        return COMPARE_SET, "Functionals"
    level = next(lv for lv, k in LEVEL_KINDS.items() if k == kind)
    return cfg.feature_set, _SMILE_LEVELS[level]


def key_config(cfg: EgemapsConfig, sample_rate: int, kind: str = "egemaps") -> dict[str, Any]:
    """What determines the values (part of the cache key): feature set, rate, openSMILE version."""
    feature_set = COMPARE_SET if kind == COMPARE else cfg.feature_set
    return {"feature_set": feature_set, "sample_rate": sample_rate, "opensmile": version("opensmile")}


def kind_config(cfg: EgemapsConfig, kind: str) -> dict[str, Any]:
    """The configuration a model folder stores for a kind (what `Egemaps` needs to recompute it)."""
    if kind == COMPARE:
        return {"feature_set": COMPARE_SET, "levels": ["functionals"]}
    return cfg.model_dump(mode="json")


class Egemaps:
    """openSMILE extractors for the requested levels; `__call__` maps a waveform to kind -> array."""

    def __init__(self, cfg: EgemapsConfig, kinds: Iterable[str] | None = None):
        import opensmile  # imported here: only the processes that extract pay for it

        wanted = set(kinds) if kinds is not None else set(kinds_for(cfg))
        self.smiles: dict[str, Any] = {}
        for kind in SMILE_KINDS:
            if kind in wanted:
                feature_set, level = _set_and_level(cfg, kind)
                self.smiles[kind] = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                                    feature_level=getattr(opensmile.FeatureLevel, level))

    def dims(self) -> dict[str, int]:
        """Features per kind (88 functionals / 25 LLDs for eGeMAPSv02)."""
        return {kind: len(s.feature_names) for kind, s in self.smiles.items()}

    def __call__(self, x: np.ndarray, sample_rate: int, kinds: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """`egemaps` -> (n_features,), `egemaps_lld` -> (n_lld, frames); float32."""
        out: dict[str, np.ndarray] = {}
        for kind in kinds if kinds is not None else self.smiles:
            values = self.smiles[kind].process_signal(x, sample_rate).to_numpy(dtype=np.float32)
            out[kind] = np.ascontiguousarray(values.T) if kind == LEVEL_KINDS["lld"] else values[0]
        return out
