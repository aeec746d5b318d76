"""Model folders: write, load, and predict class probabilities from features or from audio.

A model folder is everything needed to use a recognizer without the training run:
  model.pt    the `state_dict`
  model.json  arch, classes, feature kind + configuration, audio configuration, normalisation
              statistics, arch configuration, input size, training facts and lineage hashes
Feature extraction for audio input uses the same code as the features stage
(`affectflow.features.logmel.LogMel`, openSMILE for eGeMAPS) with the configuration stored in the
folder, so a model fed audio sees exactly what it saw in training.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affectflow import audio
from affectflow.models import build_model
from affectflow.models.data import NormStats, collate, length_batches, normalize
from affectflow.storage import atomic_dir, atomic_write_json

MODEL_FILE = "model.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1
REQUIRED_META = ("arch", "classes", "feature", "feature_config", "audio", "normalization", "arch_config", "input_dim")


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the file and the field."""


@dataclass
class Recognizer:
    """A loaded model folder: the module (eval mode) and its metadata."""

    model: nn.Module
    meta: dict[str, Any]
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def feature(self) -> str:
        return str(self.meta["feature"])

    @property
    def stats(self) -> NormStats:
        return NormStats.from_dict(self.meta["normalization"])

    def stats_for(self, corpus: str | None = None) -> NormStats:
        """Statistics for a clip of `corpus`. A model fine-tuned from a DANN encoder pretrained with
        `pretrain.normalize: corpus` carries each corpus's own statistics; audio of an unknown corpus
        (None: serving, predict) is taken to come from the corpus it was adapted to (`deploy_corpus`)."""
        per = self.meta.get("normalization_per_corpus") or {}
        key = corpus if corpus in per else self.meta.get("deploy_corpus")
        return NormStats.from_dict(per[key]) if key in per else self.stats


def save_model_dir(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write model.pt + model.json atomically (the folder appears complete or not at all)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelFolderError(f"{path}/{META_FILE}: metadata lacks {missing}")
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / MODEL_FILE)
        atomic_write_json(tmp / META_FILE, {"format": FORMAT_VERSION, **meta})
    return Path(path)


def read_meta(path: str | Path) -> dict[str, Any]:
    f = Path(path) / META_FILE
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: not a model folder (no {META_FILE})") from None
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{f}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelFolderError(f"{f}: missing fields {missing}")
    return meta


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    f = Path(path) / MODEL_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f}: model weights not found")
    return torch.load(f, map_location="cpu", weights_only=True)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> Recognizer:
    """Rebuild the module from model.json and load model.pt into it."""
    meta = read_meta(path)
    model = build_model(meta["arch"], meta["arch_config"], int(meta["input_dim"]), len(meta["classes"]))
    try:
        model.load_state_dict(load_state(path))
    except RuntimeError as e:
        raise ModelFolderError(f"{Path(path) / MODEL_FILE}: weights do not fit {meta['arch']} ({e})") from None
    dev = torch.device(device)
    return Recognizer(model=model.to(dev).eval(), meta=meta, device=dev)


@torch.inference_mode()
def predict_logits(model: nn.Module, arrays: Sequence[np.ndarray], device: torch.device, batch_size: int = 32,
                   autocast: contextlib.AbstractContextManager[Any] | None = None) -> torch.Tensor:
    """Whole-utterance logits (n, C) for normalised arrays, in input order: batches of similar
    length, zero-padded, with lengths so the model masks the padding."""
    model.eval()
    lengths = [a.shape[-1] if a.ndim > 1 else 1 for a in arrays]
    parts: list[tuple[np.ndarray, torch.Tensor]] = []
    for idx in length_batches(lengths, batch_size):
        x, lens = collate([arrays[i] for i in idx])
        with autocast or contextlib.nullcontext():
            logits = model(x.to(device), None if lens is None else lens.to(device))
        parts.append((idx, logits.float().cpu()))
    out = torch.zeros(len(arrays), parts[0][1].shape[1]) if parts else torch.zeros(0, 0)
    for idx, lg in parts:
        out[torch.from_numpy(idx)] = lg
    return out


def corpus_normalization(meta: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """Per-corpus statistics of an encoder DANN-pretrained with `pretrain.normalize: corpus` (the
    encoder learnt on each corpus standardised by its own statistics, so the recognizer must see its
    inputs the same way), and the corpus unknown audio is assumed to come from: the adaptation target
    when there is exactly one. ({}, None) for every other model."""
    pre = (meta or {}).get("pretrain") or {}
    norm = pre.get("normalization") or {}
    if norm.get("mode") != "corpus" or not norm.get("per_corpus"):
        return {}, None
    targets = list(pre.get("targets") or [])
    return dict(norm["per_corpus"]), targets[0] if len(targets) == 1 else None


def predict_features(rec: Recognizer, arrays: Sequence[np.ndarray], batch_size: int = 32,
                     corpora: Sequence[str] | None = None) -> np.ndarray:
    """(n, C) class probabilities for raw (un-normalised) feature arrays, whole utterances;
    `corpora`: each array's corpus, when known (see `Recognizer.stats_for`)."""
    if not len(arrays):
        return np.zeros((0, len(rec.classes)), np.float32)
    names = list(corpora) if corpora is not None else [None] * len(arrays)
    stats = {c: rec.stats_for(c) for c in set(names)}
    logits = predict_logits(rec.model, [normalize(a, stats[c]) for a, c in zip(arrays, names, strict=True)],
                            rec.device, batch_size)
    return torch.softmax(logits, dim=-1).numpy()


class Featurizer:
    """Audio -> the feature arrays a model folder expects (same code as the features stage)."""

    def __init__(self, meta: dict[str, Any]):
        self.kind = str(meta["feature"])
        self.sample_rate = int(meta["audio"]["sample_rate"])
        self.config = dict(meta["feature_config"])
        self._impl: Any = None

    def _logmel(self) -> Any:
        from affectflow.config import LogMelConfig
        from affectflow.features.logmel import LogMel

        return LogMel(LogMelConfig.model_validate(self.config), self.sample_rate, "cpu")

    def _egemaps(self) -> Any:
        from affectflow.config import EgemapsConfig
        from affectflow.features.egemaps import Egemaps

        return Egemaps(EgemapsConfig.model_validate(self.config), [self.kind])

    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._impl is None:
            self._impl = self._logmel() if self.kind == "logmel" else self._egemaps()
        waves = [np.asarray(w, np.float32) for w in waveforms]
        if self.kind == "logmel":
            return self._impl.batch(waves)
        return [self._impl(w, self.sample_rate, [self.kind])[self.kind] for w in waves]


def load_audio(items: Sequence[str | Path | np.ndarray], sample_rate: int,
               input_rate: int | None = None) -> list[np.ndarray]:
    """File paths are decoded and resampled; arrays are taken as mono at `input_rate`
    (default: the model's rate) and resampled when it differs."""
    out = []
    for it in items:
        if isinstance(it, (str, Path)):
            out.append(audio.load(it, sample_rate))
        else:
            x = audio.to_mono(np.asarray(it, np.float32))
            out.append(audio.resample(x, input_rate or sample_rate, sample_rate))
    return out


def predict_audio(rec: Recognizer, items: Sequence[str | Path | np.ndarray], input_rate: int | None = None,
                  featurizer: Featurizer | None = None, batch_size: int = 32) -> np.ndarray:
    """(n, C) class probabilities for audio files or waveforms."""
    feats = featurizer or Featurizer(rec.meta)
    waves = load_audio(items, feats.sample_rate, input_rate)
    return predict_features(rec, feats(waves), batch_size)
