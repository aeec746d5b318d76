"""Pretrained self-supervised speech encoders (WavLM, HuBERT, wav2vec 2.0) as a feature kind.

`features.ssl.checkpoint` names the encoder: a hub id (resolved from the local Hugging Face cache
only when `HF_HUB_OFFLINE` is set, as on a cluster without internet), a local folder, or an
`s3://` prefix (mirrored into `features.ssl.cache_dir` once). It is loaded with `transformers`'
`AutoModel` / `AutoFeatureExtractor`, frozen, and each clip becomes the time-average of the
hidden states of the selected layers: one (layers x hidden) matrix, stored flattened as the `ssl`
kind in the content-addressed feature store. The cache key holds the checkpoint's *content* hash
(every file of the folder), the layers and the audio configuration, so a re-trained checkpoint
under the same name is a new key and a moved folder is the same one.

Why time-averaged layers and not frames: a frozen encoder's frames of every layer would be ~6 MB
per 3 s clip (13 x 768 x 150); the SUPERB / EmoBox recipe for emotion is a learned softmax-
weighted sum of the layers' mean-pooled states and a small head (`models.ssl.SslHead`), which
needs exactly these (L, D) matrices. Long clips are encoded in `chunk_s` windows (the average is
weighted by each window's frames), so memory stays bounded; bf16 autocast on CUDA.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectflow.config import SslConfig

SSL = "ssl"
WEIGHT_SUFFIXES = (".bin", ".safetensors", ".json", ".txt", ".model")


class SslCheckpointError(FileNotFoundError):
    """The encoder cannot be found or loaded; the message says where it looked."""


def local_checkpoint(cfg: SslConfig) -> Path | str:
    """A local folder for `cfg.checkpoint` (an s3:// prefix is mirrored into the cache folder);
    a hub id is returned as is (transformers resolves it in its own cache)."""
    ckpt = cfg.checkpoint
    if not ckpt:
        raise SslCheckpointError("features.ssl.checkpoint is empty: name a local folder, an s3:// prefix or a "
                                 "hub id of a WavLM / HuBERT / wav2vec 2.0 checkpoint")
    if ckpt.startswith("s3://"):
        from affectflow.storage.s3 import S3Store

        cache = Path(cfg.cache_dir or Path.home() / ".cache" / "affectflow" / "ssl")
        target = S3Store().localize(ckpt, cache)  # mirrored once, re-fetched only when it changed
        if not (target / "config.json").is_file():
            raise SslCheckpointError(f"features.ssl.checkpoint {ckpt}: no config.json under that prefix")
        return target
    path = Path(ckpt)
    if path.exists() or ckpt.startswith((".", "/", "~")):
        path = path.expanduser()
        if not (path / "config.json").is_file():
            raise SslCheckpointError(f"features.ssl.checkpoint {ckpt}: no config.json in {path.resolve()} "
                                     "(a transformers checkpoint folder has config.json and the weights)")
        return path
    return ckpt


_HASHES: dict[tuple[Any, ...], str] = {}


def checkpoint_hash(cfg: SslConfig) -> str:
    """Content hash of the checkpoint's files (config, weights, feature-extractor settings); read
    once per process while the files' sizes and times are unchanged."""
    where = local_checkpoint(cfg)
    folder = Path(where) if isinstance(where, Path) else _hub_folder(str(where))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    stamp = (str(folder.resolve()), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(folder).as_posix().encode())
            with f.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        _HASHES[stamp] = h.hexdigest()[:16]
    return _HASHES[stamp]


def _hub_folder(repo_id: str) -> Path:
    """The local snapshot of a hub id; never downloads when HF_HUB_OFFLINE is set."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as e:
        raise SslCheckpointError(f"features.ssl.checkpoint {repo_id}: not a local folder and not found as a hub "
                                 f"id{' in the offline Hugging Face cache' if offline else ''} "
                                 f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}): {e}") from None


def n_layers(cfg: SslConfig) -> int:
    """Layers per `ssl` vector: `cfg.layers`, or every hidden state of the checkpoint (read from its
    config.json, no weights loaded)."""
    if cfg.layers:
        return len(cfg.layers)
    from transformers import AutoConfig

    where = local_checkpoint(cfg)
    folder = where if isinstance(where, Path) else _hub_folder(str(where))
    return int(AutoConfig.from_pretrained(folder, local_files_only=True).num_hidden_layers) + 1


def encoder_layers(model: str, cfg: SslConfig) -> int | None:
    """`n_layers` for `models.arch_config` when the recognizer `model` reads the ssl kind, else None."""
    return n_layers(cfg) if model == "ssl_head" else None


def key_config(cfg: SslConfig, sample_rate: int) -> dict[str, Any]:
    """What determines the values (the cache key): the checkpoint's content, the layers, the rate,
    the chunking."""
    return {"checkpoint_sha": checkpoint_hash(cfg), "layers": list(cfg.layers), "sample_rate": sample_rate,
            "chunk_s": cfg.chunk_s, "version": 1}


class SslEncoder:
    """A frozen encoder: waveforms -> (len(layers) * hidden,) vectors of time-averaged hidden states."""

    def __init__(self, cfg: SslConfig, sample_rate: int, device: Any = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        where = local_checkpoint(cfg)
        folder = where if isinstance(where, Path) else _hub_folder(str(where))
        try:
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise SslCheckpointError(f"features.ssl.checkpoint {cfg.checkpoint}: cannot load a model from {folder} ({e})") from None
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError):
            self.extractor = None  # a bare encoder: raw waveforms, zero-mean unit-variance per clip
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.cfg, self.sample_rate = cfg, sample_rate
        n_layers = int(self.model.config.num_hidden_layers) + 1  # hidden_states[0] = the CNN's projection
        self.layers = [n_layers + i if i < 0 else i for i in (cfg.layers or range(n_layers))]
        bad = [i for i in self.layers if not 0 <= i < n_layers]
        if bad:
            raise SslCheckpointError(f"features.ssl.layers: {bad} are not layers of this encoder (0..{n_layers - 1})")
        self.hidden = int(self.model.config.hidden_size)

    @property
    def dim(self) -> int:
        return len(self.layers) * self.hidden

    def _prepare(self, wave: np.ndarray) -> np.ndarray:
        if self.extractor is not None:
            out = self.extractor(wave, sampling_rate=self.sample_rate, return_tensors="np")
            return np.asarray(out["input_values"][0], np.float32)
        return ((wave - wave.mean()) / max(float(wave.std()), 1e-7)).astype(np.float32)

    def __call__(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One vector per waveform; clips are batched in windows of `chunk_s` seconds."""
        import torch

        from affectflow.runtime.device import autocast

        window = max(1, int(self.cfg.chunk_s * self.sample_rate))
        pieces: list[tuple[int, np.ndarray]] = []
        for i, w in enumerate(waves):
            x = self._prepare(np.asarray(w, np.float32))
            min_len = int(0.1 * self.sample_rate)  # the CNN front end needs ~25 ms; pad the very short
            if len(x) < min_len:
                x = np.pad(x, (0, min_len - len(x)))
            pieces += [(i, x[s:s + window]) for s in range(0, len(x), window) if len(x[s:s + window]) >= min_len
                       or s == 0]
        sums = np.zeros((len(waves), len(self.layers), self.hidden), np.float64)
        frames = np.zeros(len(waves), np.float64)
        # Batches of equal-length windows only: no padding ever, so a clip's vector does not depend
        # on what it was batched with (group-norm front ends see padding), and training features
        # equal serving features to the float.
        by_len: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, p in pieces:
            by_len.setdefault(len(p), []).append((i, p))
        for same in by_len.values():
            for b in range(0, len(same), self.cfg.batch_size):
                batch = same[b:b + self.cfg.batch_size]
                x = torch.from_numpy(np.stack([p for _, p in batch])).to(self.device)
                with torch.inference_mode(), autocast(self.device, self.cfg.mixed_precision):
                    out = self.model(x, output_hidden_states=True)
                states = torch.stack([out.hidden_states[k] for k in self.layers], 1).float()  # (B, L, T', D)
                summed = states.sum(2).cpu().numpy()
                for j, (i, _) in enumerate(batch):
                    sums[i] += summed[j]
                    frames[i] += states.shape[2]
        means = sums / np.maximum(frames, 1)[:, None, None]
        return [m.reshape(-1).astype(np.float32) for m in means]
