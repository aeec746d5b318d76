"""openSMILE acoustic parameters on an already-decoded waveform: eGeMAPS functionals (`egemaps`,
88) and low-level descriptors (`egemaps_lld`, 25 x frames), and the ComParE 2016 functionals
(`compare`, 6373: the large brute-force set, which transfers across corpora better than eGeMAPS's
88 in the leave-one-corpus-out study, benchmarks/RESULTS.md).

Why on a waveform: the features stage decodes and resamples each clip once and hands the same
signal to both log-mel and openSMILE (`Smile.process_signal`), instead of letting openSMILE read
the file again. One `Egemaps` object lives in each worker process and is reused for every clip
(openSMILE's Python wrapper is not shareable across processes).

Why one openSMILE graph per kind, reset between clips (`_Graph`): `Smile.process_signal` builds the
whole component graph from the config files for every signal and frees it afterwards, which for
ComParE is a fixed cost of every clip; openSMILE's own `smile_reset` readies a finished graph for
the next signal. The values are the same bit for bit (tests/unit/test_features.py).
"""

from __future__ import annotations

import os
import threading
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


class _Graph:
    """One initialised openSMILE graph of a `Smile`'s feature set and level, run on one signal at a
    time and reset after each (what `Smile.process_signal` does, without rebuilding the graph)."""

    def __init__(self, smile: Any, sample_rate: int):
        from opensmile.core.config import config
        from opensmile.core.lib import OpenSMILE

        self.smile, self.sample_rate, self.names = smile, sample_rate, config
        options = smile._options()
        options.update(source=os.path.join(smile.default_config_root, config.EXTERNAL_INPUT_CONFIG),
                       sampleRate=sample_rate, nBits=16)
        self.api = OpenSMILE()
        self.api.initialize(config_file=smile.config_path, options=options, loglevel=smile.loglevel,
                            log_file=smile.logfile, debug=smile.verbose)
        self.used = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(frames, features) float32; a signal too short for any frame gives one row of NaN, as
        `process_signal` does (the features stage then refuses it, naming the file)."""
        if self.used:
            self.api.reset()  # drops the sink callback: registered again below
            self.api._callbacks.clear()  # the wrapper keeps every callback it made (and its rows) alive
        self.used = True
        rows: list[np.ndarray] = []
        self.api.external_sink_set_callback_ex(self.names.EXTERNAL_OUTPUT_COMPONENT,
                                               lambda data, meta: rows.append(data.copy()))
        pcm = (np.asarray(x, np.float32).reshape(-1) * np.float32(32768)).astype(np.int16)
        self.api.external_audio_source_write_data(self.names.EXTERNAL_SOURCE_COMPONENT, pcm.tobytes())
        self.api.external_audio_source_set_eoi(self.names.EXTERNAL_SOURCE_COMPONENT)
        self.api.run()
        if not rows:
            return np.full((1, len(self.smile.feature_names)), np.nan, np.float32)
        return np.vstack(rows).astype(np.float32, copy=False)

    def free(self) -> None:
        self.api.free()


class Egemaps:
    """openSMILE extractors for the requested levels; `__call__` maps a waveform to kind -> array.
    Each thread runs its own graphs (openSMILE's are not shareable), built on first use per rate."""

    def __init__(self, cfg: EgemapsConfig, kinds: Iterable[str] | None = None):
        import opensmile  # imported here: only the processes that extract pay for it

        wanted = set(kinds) if kinds is not None else set(kinds_for(cfg))
        self.smiles: dict[str, Any] = {}
        for kind in SMILE_KINDS:
            if kind in wanted:
                feature_set, level = _set_and_level(cfg, kind)
                self.smiles[kind] = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                                    feature_level=getattr(opensmile.FeatureLevel, level))
        self._local = threading.local()

    def _graph(self, kind: str, sample_rate: int) -> _Graph:
        graphs: dict[tuple[str, int], _Graph] = self._local.__dict__.setdefault("graphs", {})
        graph = graphs.get((kind, sample_rate))
        if graph is None:
            graph = graphs[(kind, sample_rate)] = _Graph(self.smiles[kind], sample_rate)
        return graph

    def dims(self) -> dict[str, int]:
        """Features per kind (88 functionals / 25 LLDs for eGeMAPSv02)."""
        return {kind: len(s.feature_names) for kind, s in self.smiles.items()}

    def __call__(self, x: np.ndarray, sample_rate: int, kinds: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """`egemaps` -> (n_features,), `egemaps_lld` -> (n_lld, frames); float32."""
        out: dict[str, np.ndarray] = {}
        for kind in kinds if kinds is not None else self.smiles:
            try:
                values = self._graph(kind, sample_rate)(x)
            except Exception:
                # a graph that failed mid-run is not in a state to reset: the next clip builds a new one
                broken = self._local.__dict__.get("graphs", {}).pop((kind, sample_rate), None)
                if broken is not None:
                    broken.free()
                raise
            out[kind] = np.ascontiguousarray(values.T) if kind == LEVEL_KINDS["lld"] else values[0]
        return out
