"""eGeMAPS (or ComParE) acoustic parameters through openSMILE, on an already-decoded waveform.

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

_SMILE_LEVELS = {"functionals": "Functionals", "lld": "LowLevelDescriptors"}


def kinds_for(cfg: EgemapsConfig) -> list[str]:
    return [LEVEL_KINDS[level] for level in dict.fromkeys(cfg.levels)]


def key_config(cfg: EgemapsConfig, sample_rate: int) -> dict[str, Any]:
    """What determines the values (part of the cache key): feature set, rate, openSMILE version."""
    return {"feature_set": cfg.feature_set, "sample_rate": sample_rate, "opensmile": version("opensmile")}


class Egemaps:
    """openSMILE extractors for the requested levels; `__call__` maps a waveform to kind -> array."""

    def __init__(self, cfg: EgemapsConfig, kinds: Iterable[str] | None = None):
        import opensmile  # imported here: only the processes that extract pay for it

        wanted = set(kinds) if kinds is not None else set(kinds_for(cfg))
        feature_set = getattr(opensmile.FeatureSet, cfg.feature_set)
        self.smiles: dict[str, Any] = {}
        for level, kind in LEVEL_KINDS.items():
            if kind in wanted:
                self.smiles[kind] = opensmile.Smile(
                    feature_set=feature_set, feature_level=getattr(opensmile.FeatureLevel, _SMILE_LEVELS[level]))

    def dims(self) -> dict[str, int]:
        """Features per kind (88 functionals / 25 LLDs for eGeMAPSv02)."""
        return {kind: len(s.feature_names) for kind, s in self.smiles.items()}

    def __call__(self, x: np.ndarray, sample_rate: int, kinds: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """`egemaps` -> (n_features,), `egemaps_lld` -> (n_lld, frames); float32."""
        out: dict[str, np.ndarray] = {}
        for kind in kinds if kinds is not None else self.smiles:
            values = self.smiles[kind].process_signal(x, sample_rate).to_numpy(dtype=np.float32)
            out[kind] = values[0] if kind == LEVEL_KINDS["functionals"] else np.ascontiguousarray(values.T)
        return out
