"""A loaded recognizer: class probabilities from features or from audio.

The model folder format (model.pt + model.json) is `affectflow.contracts.model_folder`'s; this
module rebuilds the network from it and runs it. Feature extraction for audio input uses the same
code as the features stage (`affectflow.features.logmel.LogMel`, openSMILE for eGeMAPS) with the
configuration stored in the folder, so a model fed audio sees exactly what it saw in training.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affectflow import audio
from affectflow.contracts.model_folder import (
    MODEL_FILE,
    ModelFolderError,
    ModelMeta,
    load_weights,
    read_model_meta,
)
from affectflow.models import build_model
from affectflow.models import dimensions as dimension_head
from affectflow.models.calibration import scaled_probabilities
from affectflow.models.data import NormStats, collate, compute_stats, length_batches, normalize
from affectflow.serving.deployment import Deployment


@dataclass
class Recognizer:
    """A loaded model folder: the module (eval mode) and its metadata."""

    model: nn.Module
    meta: ModelMeta
    device: torch.device
    _deployment: Deployment | None = field(default=None, repr=False)
    recorder: Any = field(default=None, repr=False)
    """The prediction log's `Recorder` (`serving.prediction_log.attach_recorder`): notes every window scored."""

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def feature(self) -> str:
        return self.meta.feature

    @property
    def temperature(self) -> float:
        """Logit temperature of the folder's calibration (1: uncalibrated)."""
        return self.meta.calibration.temperature if self.meta.calibration else 1.0

    @property
    def stats(self) -> NormStats:
        return NormStats.from_dict(self.meta.normalization)

    def stats_for(self, corpus: str | None = None) -> NormStats | None:
        """Statistics for a clip of `corpus`: its own when the model was trained (or DANN-adapted)
        on it; for audio of any other corpus (None: serving, predict) those of the corpus a DANN
        encoder was adapted to (`deploy_corpus`), else None: the deploy rule decides."""
        per = self.meta.normalization_per_corpus
        if corpus is not None and corpus in per:
            return NormStats.from_dict(per[corpus])
        if corpus is not None and corpus in self.meta.train.corpora:
            return self.stats  # a training corpus of a model standardised with pooled statistics
        key = self.meta.deploy_corpus
        return NormStats.from_dict(per[key]) if key in per else None

    def whole_set_stats(self, arrays: Sequence[np.ndarray]) -> NormStats:
        """Offline only (evaluate scoring a whole held-out corpus): the statistics of all `arrays`
        together when the model standardises unknown audio by its own (`deploy_normalization:
        running`) and there are at least `min_clips` of them; else the training statistics."""
        rule = self.meta.deploy_normalization
        if rule.mode == "running" and len(arrays) >= rule.min_clips and self.stats.mode != "utterance":
            return compute_stats(arrays, "global")
        return self.stats

    @property
    def deployment(self) -> Deployment:
        """The deployment statistics unknown audio is standardised with (in memory, fresh, unless a
        caller attached a persisted one with `attach_deployment`)."""
        if self._deployment is None:
            self._deployment = Deployment(self.meta)
        return self._deployment

    def attach_deployment(self, location: str | Path | None, store: Any = None,
                          replace_other_features: bool = False) -> Deployment:
        """Keep this recognizer's deployment statistics at `location` (a JSON path or s3:// URI;
        read now if it exists, written by `Deployment.save`); None: in memory only."""
        self._deployment = Deployment(self.meta, location, store, replace_other_features)
        return self._deployment


def build_network(meta: ModelMeta) -> nn.Module:
    """The (untrained) network a model folder's metadata describes."""
    model = build_model(meta.arch, meta.arch_config, meta.input_dim, len(meta.classes))
    return dimension_head.attach(model, len(meta.dimensions.names)) if meta.dimensions else model


@dataclass
class Scores:
    """What a recognizer says of some clips: class probabilities (n, C) and, when the model has a
    dimensional head, `dimensions` (n, len(names)) on [-1, 1] (`corpora.dimensions`), else None."""

    probabilities: np.ndarray
    dimensions: np.ndarray | None = None
    names: list[str] = field(default_factory=list)

    def stacked(self) -> np.ndarray:
        """(n, C + len(names)): the probabilities, then the dimensions (predict's score rows)."""
        return self.probabilities if self.dimensions is None else np.hstack([self.probabilities, self.dimensions])

    def rows(self, a: int, b: int) -> Scores:
        return Scores(self.probabilities[a:b], None if self.dimensions is None else self.dimensions[a:b], self.names)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> Recognizer:
    """Rebuild the module from model.json and load model.pt into it."""
    meta = read_model_meta(path)
    model = build_network(meta)
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as e:
        raise ModelFolderError(f"{Path(path) / MODEL_FILE}: weights do not fit {meta.arch} ({e})") from None
    dev = torch.device(device)
    return Recognizer(model=model.to(dev).eval(), meta=meta, device=dev)


@torch.inference_mode()
def _batched(forward: Any, arrays: Sequence[np.ndarray], device: torch.device, batch_size: int,
             autocast: contextlib.AbstractContextManager[Any] | None) -> torch.Tensor:
    """`forward(x, lengths)` over normalised arrays in batches of similar length, zero-padded, with
    lengths so the model masks the padding; rows in input order."""
    lengths = [a.shape[-1] if a.ndim > 1 else 1 for a in arrays]
    parts: list[tuple[np.ndarray, torch.Tensor]] = []
    for idx in length_batches(lengths, batch_size):
        x, lens = collate([arrays[i] for i in idx])
        with autocast or contextlib.nullcontext():
            out = forward(x.to(device), None if lens is None else lens.to(device))
        parts.append((idx, out.float().cpu()))
    out = torch.zeros(len(arrays), parts[0][1].shape[1]) if parts else torch.zeros(0, 0)
    for idx, part in parts:
        out[torch.from_numpy(idx)] = part
    return out


def predict_logits(model: nn.Module, arrays: Sequence[np.ndarray], device: torch.device, batch_size: int = 32,
                   autocast: contextlib.AbstractContextManager[Any] | None = None) -> torch.Tensor:
    """Whole-utterance logits (n, C) for normalised arrays, in input order."""
    model.eval()
    return _batched(model, arrays, device, batch_size, autocast)


def predict_embeddings(model: nn.Module, arrays: Sequence[np.ndarray], device: torch.device,
                       batch_size: int = 32) -> torch.Tensor:
    """The encoder's whole-utterance embeddings (n, D) for normalised arrays (what the head reads)."""
    model.eval()
    return _batched(model.encoder, arrays, device, batch_size, None)


def predict_features(rec: Recognizer, arrays: Sequence[np.ndarray], batch_size: int = 32,
                     corpora: Sequence[str] | None = None, calibrated: bool = True,
                     whole_set: bool = False) -> np.ndarray:
    """(n, C) class probabilities: `predict_scores`' probabilities."""
    return predict_scores(rec, arrays, batch_size, corpora, calibrated, whole_set).probabilities


def predict_scores(rec: Recognizer, arrays: Sequence[np.ndarray], batch_size: int = 32,
                   corpora: Sequence[str] | None = None, calibrated: bool = True,
                   whole_set: bool = False) -> Scores:
    """(n, C) class probabilities (and the dimensions, `Scores`) for raw (un-normalised) feature arrays, whole utterances, in order;
    `corpora`: each array's corpus, when known (see `Recognizer.stats_for`). Arrays of corpora the
    model does not know are standardised by the deployment statistics (`rec.deployment`), each by
    the clips before it, so a call gives what its arrays give one call at a time in the same order.
    `whole_set`: offline scoring of a whole corpus (evaluate) — unknown arrays standardised together
    by their own statistics (`Recognizer.whole_set_stats`), the deployment statistics untouched.
    `calibrated`: with the folder's temperature (`ModelMeta.calibration`); False only for
    evaluate's before/after comparison."""
    dim_names = list(rec.meta.dimensions.names) if rec.meta.dimensions else []
    if not len(arrays):
        return Scores(np.zeros((0, len(rec.classes)), np.float32),
                      np.zeros((0, len(dim_names)), np.float32) if dim_names else None, dim_names)
    names = list(corpora) if corpora is not None else [None] * len(arrays)
    stats = {c: rec.stats_for(c) for c in set(names)}
    unknown = [i for i, c in enumerate(names) if stats[c] is None]
    normed: list[np.ndarray | None] = [None if stats[c] is None else normalize(a, stats[c])  # type: ignore[arg-type]
                                       for a, c in zip(arrays, names, strict=True)]
    if unknown and whole_set:
        together = rec.whole_set_stats([arrays[i] for i in unknown])
        for i in unknown:
            normed[i] = normalize(arrays[i], together)
    elif unknown:
        for i, x in zip(unknown, rec.deployment.normalise([arrays[i] for i in unknown]), strict=True):
            normed[i] = x
    net = dimension_head.Joint(rec.model) if dim_names else rec.model  # one pass for both heads
    out = predict_logits(net, normed, rec.device, batch_size).numpy()  # type: ignore[arg-type]
    if rec.recorder is not None:  # the prediction log: each window's summary, after it was scored
        rec.recorder.observe(arrays)
    c = len(rec.classes)
    probs = scaled_probabilities(out[:, :c], rec.temperature if calibrated else 1.0)
    return Scores(probs, out[:, c:].astype(np.float32) if dim_names else None, dim_names)


def predict_stream(rec: Recognizer, arrays: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """The streamed protocol: (n, C) probabilities for the arrays of one unseen corpus arriving one
    clip at a time in this order, with a fresh deployment (pooled training statistics until
    `min_clips` clips, then the statistics of the clips before each one; never a label)."""
    fresh = Recognizer(rec.model, rec.meta, rec.device)
    return predict_features(fresh, arrays, batch_size)


class Featurizer:
    """Audio -> the feature arrays a model folder expects: its kind's extractor (the table
    `affectflow.features.kinds`, the same code as the features stage) with the configuration stored
    in the folder, built on first use on `device` (log-mel and pretrained encoders run there)."""

    def __init__(self, meta: ModelMeta, device: Any = "cpu"):
        self.kind = meta.feature
        self.sample_rate = meta.sample_rate
        self.config = dict(meta.feature_config)
        self.device = device
        self._extract: Any = None

    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._extract is None:
            from affectflow.features.kinds import kind_spec

            self._extract = kind_spec(self.kind).extractor(self.config, self.sample_rate, self.device, self.kind)
        return self._extract(waveforms)  # type: ignore[no-any-return]


def load_audio(items: Sequence[str | Path | np.ndarray], sample_rate: int,
               input_rate: int | None = None) -> list[np.ndarray]:
    """File paths are decoded and resampled; arrays are taken as mono at `input_rate` (None: the
    model's rate) and resampled when it differs. Empty or non-finite arrays and a rate that is not
    positive are errors, not silently scored."""
    if input_rate is not None and (isinstance(input_rate, bool) or int(input_rate) != input_rate or input_rate <= 0):
        raise ValueError(f"input_rate: expected a positive whole number of Hz, got {input_rate!r}")
    rate = sample_rate if input_rate is None else int(input_rate)
    out = []
    for k, it in enumerate(items):
        if isinstance(it, (str, Path)):
            out.append(audio.load(it, sample_rate))
        else:
            out.append(audio.resample(audio.check_samples(it, f"waveform {k}"), rate, sample_rate))
    return out


class NonFiniteFeatures(ValueError):
    """Features of one clip came out NaN or infinite: refused, never scored into a NaN answer.
    `group` / `item` locate the clip among `predict_audio_groups`'s groups (callers name the row)."""

    def __init__(self, group: int, item: int, count: int, kind: str):
        self.group, self.item = group, item
        super().__init__(f"{count} of its {kind} features are NaN or infinite; the clip cannot be scored")

    def with_text(self, text: str) -> NonFiniteFeatures:
        """The same error located elsewhere (a request row instead of a window), with `text`."""
        self.args = (text,)
        return self


def predict_audio(rec: Recognizer, items: Sequence[str | Path | np.ndarray], input_rate: int | None = None,
                  featurizer: Featurizer | None = None, batch_size: int = 32) -> np.ndarray:
    """(n, C) class probabilities for audio files or waveforms."""
    return predict_audio_groups(rec, [(items, input_rate)], featurizer, batch_size)[0]


def predict_audio_groups(rec: Recognizer, groups: Sequence[tuple[Sequence[str | Path | np.ndarray], int | None]],
                         featurizer: Featurizer | None = None, batch_size: int = 32,
                         order: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """Probabilities per group of (audio items, their sample rate) (the rows of one request at
    several rates): each group is resampled once. `order`: each item's position in the request, so
    the deployment statistics see the clips in request order (as if sent one by one); default:
    group after group."""
    return [s.probabilities for s in predict_audio_group_scores(rec, groups, featurizer, batch_size, order)]


def predict_audio_group_scores(rec: Recognizer, groups: Sequence[tuple[Sequence[str | Path | np.ndarray], int | None]],
                               featurizer: Featurizer | None = None, batch_size: int = 32,
                               order: Sequence[Sequence[int]] | None = None) -> list[Scores]:
    """`predict_audio_groups` with the dimensions (`Scores`) of each group."""
    feats = featurizer or Featurizer(rec.meta)
    arrays = [feats(load_audio(items, feats.sample_rate, rate)) for items, rate in groups]
    for g, group in enumerate(arrays):
        for k, a in enumerate(group):
            if not np.isfinite(a).all():
                raise NonFiniteFeatures(g, k, int(np.size(a) - np.isfinite(a).sum()), rec.feature)
    flat = [a for g in arrays for a in g]
    pos = np.asarray([p for g in order for p in g], np.int64) if order is not None else np.arange(len(flat))
    if len(pos) != len(flat):
        raise ValueError(f"predict_audio_groups: {len(pos)} positions for {len(flat)} clips")
    by_position = np.argsort(pos, kind="stable")
    scored = predict_scores(rec, [flat[i] for i in by_position], batch_size)
    probs = np.empty((len(flat), len(rec.classes)), np.float32)
    probs[by_position] = scored.probabilities
    dims = None
    if scored.dimensions is not None:
        dims = np.empty((len(flat), scored.dimensions.shape[1]), np.float32)
        dims[by_position] = scored.dimensions
    every = Scores(probs, dims, scored.names)
    bounds = np.cumsum([0, *(len(g) for g in arrays)])
    return [every.rows(a, b) for a, b in itertools.pairwise(bounds)]
