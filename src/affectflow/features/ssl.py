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
weighted by each window's frames), so memory stays bounded; bf16 autocast on CUDA. The encoder stops
after the highest layer `features.ssl.layers` keeps (`stop_after`): layers above it are never run.

Whisper encoders (`model_type: whisper`) take 80/128-bin log-mels, not waveforms, and were trained
on 30 s windows. `window: clip` restricts the positional range to the clip's own frames (a 3 s clip
costs 3 s, not 30; measured against `window: padded` in benchmarks/RESULTS.md). A faster-whisper
(CTranslate2) folder is converted once into the transformers layout (`features.whisper_ct2`: every
hidden state, which CTranslate2's encoder does not return), and `pkg:<name>` names a checkpoint
installed from packages (`features.packaged`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectflow.config import SslConfig
from affectflow.features.packaged import PACKAGE_PREFIX
from affectflow.features.whisper_ct2 import CT2_MODEL_FILE, content_hash, is_ct2_whisper

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
                                 "hub id of a WavLM / HuBERT / wav2vec 2.0 / Whisper checkpoint, a "
                                 "faster-whisper folder, or pkg:whisper-base")
    if ckpt.startswith(PACKAGE_PREFIX):
        from affectflow.features.packaged import assemble

        return _transformers_layout(assemble(ckpt[len(PACKAGE_PREFIX):], cache_folder(cfg)), cfg)
    if ckpt.startswith("s3://"):
        from affectflow.storage.s3 import S3Store

        target = S3Store().localize(ckpt, cache_folder(cfg))  # mirrored once, re-fetched only when it changed
        if not (target / "config.json").is_file():
            raise SslCheckpointError(f"features.ssl.checkpoint {ckpt}: no config.json under that prefix")
        return _transformers_layout(target, cfg)
    path = Path(ckpt)
    if path.exists() or ckpt.startswith((".", "/", "~")):
        path = path.expanduser()
        if is_ct2_whisper(path):
            return _transformers_layout(path, cfg)
        if not (path / "config.json").is_file():
            raise SslCheckpointError(f"features.ssl.checkpoint {ckpt}: no config.json in {path.resolve()} "
                                     "(a transformers checkpoint folder has config.json and the weights)")
        return path
    return ckpt


def cache_folder(cfg: SslConfig) -> Path:
    """Where mirrored, assembled and converted checkpoints live (`features.ssl.cache_dir`)."""
    return Path(cfg.cache_dir or Path.home() / ".cache" / "affectflow" / "ssl").expanduser()


_CONVERTED: dict[tuple[Any, ...], Path] = {}


def _transformers_layout(folder: Path, cfg: SslConfig) -> Path:
    """`folder` itself, or, for a faster-whisper (CTranslate2) folder, its transformers conversion
    under the cache folder (named by model.bin's content, converted once)."""
    if not is_ct2_whisper(folder):
        return folder
    from affectflow.features.whisper_ct2 import convert

    stat = (folder / CT2_MODEL_FILE).stat()
    stamp = (str(folder.resolve()), stat.st_size, stat.st_mtime_ns)
    if stamp not in _CONVERTED:
        target = cache_folder(cfg) / f"ct2-{content_hash(folder)}"
        if not (target / "config.json").is_file():
            convert(folder, target)
        _CONVERTED[stamp] = target
    return _CONVERTED[stamp]


_HASHES: dict[tuple[Any, ...], str] = {}


def checkpoint_hash(cfg: SslConfig) -> str:
    """Content hash of the checkpoint's files (config, weights, feature-extractor settings); read
    once per process while the files' sizes and times are unchanged."""
    folder = checkpoint_folder(cfg)
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


def checkpoint_folder(cfg: SslConfig) -> Path:
    """The checkpoint's local folder (a hub id: its snapshot in the offline cache)."""
    where = local_checkpoint(cfg)
    return where if isinstance(where, Path) else _hub_folder(str(where))


def resolve_states(layers: list[int], total: int) -> list[int]:
    """`features.ssl.layers` as the encoder's hidden-state indices 0..total-1 (negative: from the
    end; [] = every state); an error naming the setting for an index the encoder lacks."""
    bad = [i for i in layers if not -total <= i < total]
    if bad:
        raise SslCheckpointError(f"features.ssl.layers: {bad} are not layers of this encoder (0..{total - 1})")
    return [i % total for i in layers] or list(range(total))


def kept_states(cfg: SslConfig) -> tuple[list[int], int]:
    """(the encoder's hidden-state index of each stored layer, the encoder's hidden states), read
    from the checkpoint's config.json (no weights loaded): what a model picking one stored layer by
    its encoder index needs (`models.ssl_linear.layer_index`)."""
    from transformers import AutoConfig

    total = int(AutoConfig.from_pretrained(checkpoint_folder(cfg), local_files_only=True).num_hidden_layers) + 1
    return resolve_states(cfg.layers, total), total


def key_config(cfg: SslConfig, sample_rate: int) -> dict[str, Any]:
    """What determines the values (the cache key): the checkpoint's content, the layers, the rate,
    the chunking."""
    key = {"checkpoint_sha": checkpoint_hash(cfg), "layers": list(cfg.layers), "sample_rate": sample_rate,
           "chunk_s": cfg.chunk_s, "version": 1}
    if cfg.window != "clip":  # Whisper's 30 s windows; absent from the key by default (keys made before it stay)
        key["window"] = cfg.window
    return key


WHISPER_WINDOW_S = 30.0  # Whisper's training window: 1500 positions of 20 ms
MEL_HOP = 160  # WhisperFeatureExtractor's hop at 16 kHz


class SslEncoder:
    """A frozen encoder: waveforms -> (len(layers) * hidden,) vectors of time-averaged hidden states."""

    def __init__(self, cfg: SslConfig, sample_rate: int, device: Any = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModel

        folder = checkpoint_folder(cfg)
        try:
            model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise SslCheckpointError(f"features.ssl.checkpoint {cfg.checkpoint}: cannot load a model from {folder} ({e})") from None
        self.whisper = model.config.model_type == "whisper"
        self.model = model.get_encoder() if self.whisper else model  # Whisper: the decoder is not needed
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError):
            self.extractor = None  # a bare encoder: raw waveforms, zero-mean unit-variance per clip
            if self.whisper:
                from transformers import WhisperFeatureExtractor

                self.extractor = WhisperFeatureExtractor(feature_size=int(model.config.num_mel_bins))
        if self.whisper and sample_rate != self.extractor.sampling_rate:
            raise SslCheckpointError(f"features.ssl.checkpoint {cfg.checkpoint}: Whisper needs "
                                     f"{self.extractor.sampling_rate} Hz audio, audio.sample_rate is {sample_rate}")
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.cfg, self.sample_rate = cfg, sample_rate
        # hidden_states[0] = the front end's projection
        self.layers = resolve_states(cfg.layers, int(model.config.num_hidden_layers) + 1)
        self.hidden = int(model.config.hidden_size)
        self.layers_run = stop_after(self.model, max(self.layers), self.whisper)

    @property
    def dim(self) -> int:
        return len(self.layers) * self.hidden

    def _prepare(self, wave: np.ndarray) -> np.ndarray:
        if self.extractor is not None:
            out = self.extractor(wave, sampling_rate=self.sample_rate, return_tensors="np")
            return np.asarray(out["input_values"][0], np.float32)
        return ((wave - wave.mean()) / max(float(wave.std()), 1e-7)).astype(np.float32)

    def _whisper_mel(self, wave: np.ndarray) -> tuple[np.ndarray, int]:
        """(log-mel, the encoder frames that hold the clip): the clip's own frames (`window: clip`),
        or padded to 30 s as Whisper was trained (`window: padded`)."""
        padded = self.cfg.window == "padded"
        out = self.extractor(wave, sampling_rate=self.sample_rate, return_tensors="np",
                             padding="max_length" if padded else "longest")
        mel = np.asarray(out["input_features"][0], np.float32)
        return mel, min(-(-(len(wave) // MEL_HOP) // 2), (mel.shape[1] + 1) // 2)

    def _windows(self, waves: Sequence[np.ndarray]) -> list[tuple[int, np.ndarray, int]]:
        """(clip index, encoder input, frames to average) per window of `chunk_s` seconds."""
        chunk_s = min(self.cfg.chunk_s, WHISPER_WINDOW_S) if self.whisper else self.cfg.chunk_s
        window = max(1, int(chunk_s * self.sample_rate))
        min_len = int(0.1 * self.sample_rate)  # the CNN front end needs ~25 ms; pad the very short
        pieces: list[tuple[int, np.ndarray, int]] = []
        for i, w in enumerate(waves):
            x = np.asarray(w, np.float32)
            if not self.whisper:
                x = self._prepare(x)
            if len(x) < min_len:
                x = np.pad(x, (0, min_len - len(x)))
            for s in range(0, len(x), window):
                piece = x[s:s + window]
                if len(piece) < min_len and s > 0:
                    continue
                if self.whisper:
                    mel, frames = self._whisper_mel(piece)
                    pieces.append((i, mel, frames))
                else:
                    pieces.append((i, piece, 0))
        return pieces

    def _hidden_states(self, x: Any) -> list[Any]:
        """Every hidden state of one batch of equal-length inputs."""
        if not self.whisper:
            return list(self.model(x, output_hidden_states=True).hidden_states)
        return whisper_hidden_states(self.model, x)

    def __call__(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One vector per waveform; clips are batched in windows of `chunk_s` seconds."""
        import torch

        from affectflow.runtime.device import autocast

        sums = np.zeros((len(waves), len(self.layers), self.hidden), np.float64)
        frames = np.zeros(len(waves), np.float64)
        # Batches of equal-length windows only: no padding ever, so a clip's vector does not depend
        # on what it was batched with (group-norm front ends see padding), and training features
        # equal serving features to the float.
        by_len: dict[tuple[int, ...], list[tuple[int, np.ndarray, int]]] = {}
        for piece in self._windows(waves):
            by_len.setdefault(piece[1].shape, []).append(piece)
        for same in by_len.values():
            for b in range(0, len(same), self.cfg.batch_size):
                batch = same[b:b + self.cfg.batch_size]
                x = torch.from_numpy(np.stack([p for _, p, _ in batch])).to(self.device)
                with torch.inference_mode(), autocast(self.device, self.cfg.mixed_precision):
                    hidden = self._hidden_states(x)
                states = torch.stack([hidden[k] for k in self.layers], 1).float()  # (B, L, T', D)
                for j, (i, _, keep) in enumerate(batch):
                    used = keep or states.shape[2]  # Whisper: only the clip's frames of a window
                    sums[i] += states[j, :, :used].sum(1).cpu().numpy()
                    frames[i] += used
        means = sums / np.maximum(frames, 1)[:, None, None]
        return [m.reshape(-1).astype(np.float32) for m in means]


def stop_after(model: Any, last: int, whisper: bool) -> int:
    """Drop the encoder's layers above hidden state `last` (in place), so a run computes only what
    `features.ssl.layers` keeps: the kept states are the full run's (tested), at a fraction of the
    cost (hidden state 3 of Whisper-base's 7 is about half of it). The final layer norm, which
    belongs to the last layer's state only (Whisper; wav2vec 2.0-style "stable layer norm"
    encoders), goes with the dropped layers. Returns the layers the encoder now runs; an encoder
    without a `layers` list (another architecture) is left whole."""
    from torch import nn

    stack = model if whisper else getattr(model, "encoder", None)
    layers = getattr(stack, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return int(model.config.num_hidden_layers)
    if last >= len(layers):
        return len(layers)
    stack.layers = nn.ModuleList(list(layers)[:last])
    if whisper or getattr(model.config, "do_stable_layer_norm", False):
        stack.layer_norm = nn.Identity()
    return last


def whisper_hidden_states(encoder: Any, mel: Any) -> list[Any]:
    """`WhisperEncoder`'s hidden states (the input embedding, then each layer, the last one after
    the final layer norm, as transformers returns them) for log-mels of any length up to 30 s:
    the positional embeddings are cut to the clip's frames instead of requiring 3000 mel frames.
    At 3000 frames this equals `encoder(mel, output_hidden_states=True).hidden_states`; on an
    encoder cut by `stop_after` its final norm is the identity."""
    from torch import nn

    x = nn.functional.gelu(encoder.conv1(mel))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    positions = encoder.embed_positions.weight
    if x.shape[1] > positions.shape[0]:
        raise ValueError(f"Whisper encoder: {x.shape[1]} frames exceed its {positions.shape[0]} positions")
    x = x + positions[:x.shape[1]]
    states = [x]
    for layer in encoder.layers:
        out = layer(x, None, layer_head_mask=None)
        x = out[0] if isinstance(out, tuple) else out
        states.append(x)
    states[-1] = encoder.layer_norm(x)
    return states
