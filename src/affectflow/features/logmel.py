"""Log-mel spectrograms in torch, computed for a batch of variable-length clips at once.

Why batched: one STFT call on a padded (batch, samples) tensor amortises the per-call overhead that
dominates a per-clip loop on CPU and is what keeps a GPU busy. Why it stays exact: every clip is
reflect-padded by ``n_fft // 2`` *on its own* before it joins the zero-padded batch (what
``torch.stft(center=True, pad_mode="reflect")`` does per clip), and only its own frames
``1 + (n + 2*(n_fft//2) - n_fft) // hop`` are kept, so no batch padding leaks into any frame.
`LogMel.reference` is that per-clip ``torch.stft`` computation; tests compare the two.

The mel filterbank is built here (torchaudio is not a dependency) with numpy in float64 once,
following the HTK formula (``2595 log10(1 + f/700)``) or Slaney's (linear below 1 kHz, log above),
optionally with Slaney area normalisation — the same matrices ``torchaudio.functional.melscale_fbanks``
and ``librosa.filters.mel(htk=...)`` produce. The cache key of these arrays (config + version) is
built in `affectflow.stages.features` so that checking the cache never has to import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from affectflow.config import LogMelConfig

# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOGSTEP = math.log(6.4) / 27.0

def hz_to_mel(f: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    lin = f / _SLANEY_F_SP
    log = min_log_mel + np.log(np.maximum(f, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return np.where(f >= _SLANEY_MIN_LOG_HZ, log, lin)


def mel_to_hz(m: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    lin = _SLANEY_F_SP * m
    log = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (np.maximum(m, min_log_mel) - min_log_mel))
    return np.where(m >= min_log_mel, log, lin)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float,
                   scale: str = "htk", norm: str = "none") -> np.ndarray:
    """(n_freqs, n_mels) triangular filters over the STFT bins 0..sample_rate/2.

    Filter m rises linearly (in Hz) from corner m to its centre m+1 and falls to corner m+2, the
    n_mels + 2 corners being equally spaced on the mel scale between f_min and f_max; so between
    the first and the last centre the (unnormalised) filters sum to exactly 1.
    """
    all_freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2)
    f_pts = mel_to_hz(m_pts, scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    if norm == "slaney":
        fb *= 2.0 / (f_pts[2:] - f_pts[:-2])
    return fb


class LogMel:
    """log(mel power spectrogram + floor) for one configuration, on one device."""

    def __init__(self, cfg: LogMelConfig, sample_rate: int, device: str | torch.device = "cpu"):
        check_config(cfg, sample_rate)
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.device = torch.device(device)
        self.pad = cfg.n_fft // 2
        n_freqs = cfg.n_fft // 2 + 1
        fb = mel_filterbank(n_freqs, sample_rate, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale, cfg.mel_norm)
        self.fb = torch.from_numpy(fb.astype(np.float32)).to(self.device)  # (n_freqs, n_mels)
        self.window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float32)
        left = (cfg.n_fft - cfg.win_length) // 2
        # torch.stft centres a short window inside n_fft the same way.
        self.window_full = torch.nn.functional.pad(
            self.window, (left, cfg.n_fft - cfg.win_length - left)).to(self.device)
        self.window = self.window.to(self.device)

    # ------------------------------------------------------------------ shapes
    def min_samples(self) -> int:
        """Shortest input that reflect padding accepts; shorter clips are zero-extended to it."""
        return self.pad + 1

    def frames(self, n_samples: int) -> int:
        """Frames torch.stft(center=True) gives for a clip of n_samples (after zero-extension)."""
        n = max(n_samples, self.min_samples())
        return 1 + (n + 2 * self.pad - self.cfg.n_fft) // self.cfg.hop_length

    def _extend(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.size < self.min_samples():
            x = np.pad(x, (0, self.min_samples() - x.size))
        return x

    # ------------------------------------------------------------------ compute
    def _finish(self, power: torch.Tensor) -> torch.Tensor:
        """(..., frames, n_freqs) power -> (..., frames, n_mels) log-mel."""
        return torch.log(torch.matmul(power, self.fb).add_(self.cfg.log_floor))

    @torch.inference_mode()
    def reference(self, x: np.ndarray) -> np.ndarray:
        """One clip through torch.stft (the definition the batched path must match): (n_mels, frames)."""
        t = torch.from_numpy(self._extend(x)).to(self.device)
        spec = torch.stft(t, self.cfg.n_fft, self.cfg.hop_length, self.cfg.win_length, self.window,
                          center=True, pad_mode="reflect", return_complex=True)  # (n_freqs, frames)
        power = spec.real.square() + spec.imag.square()
        return self._finish(power.T).T.contiguous().cpu().numpy()

    def pad_batch(self, xs: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Reflect-pad each clip on its own, then zero-pad to the longest: (batch, samples), frames."""
        clips = [self._extend(x) for x in xs]
        p = self.pad
        width = max(c.size for c in clips) + 2 * p
        out = np.empty((len(clips), width), dtype=np.float32)
        for row, c in zip(out, clips, strict=True):
            n = c.size
            # np.pad(c, p, mode="reflect") written in place: edges mirrored without repeating them.
            row[:p] = c[p:0:-1]
            row[p : p + n] = c
            row[p + n : n + 2 * p] = c[n - 2 : n - 2 - p : -1] if n - 2 - p >= 0 else c[n - 2 :: -1][:p]
            row[n + 2 * p :] = 0.0
        return out, [self.frames(c.size) for c in clips]

    @torch.inference_mode()
    def batch(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-mel of several clips in one pass; each result is (n_mels, own frames) float32."""
        if not xs:
            return []
        padded, frames = self.pad_batch(xs)
        t = torch.from_numpy(padded)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        # Framing + rfft is what torch.stft does internally, minus its (freq, frames) transposes.
        framed = t.unfold(-1, self.cfg.n_fft, self.cfg.hop_length) * self.window_full
        spec = torch.view_as_real(torch.fft.rfft(framed))  # (batch, frames, n_freqs, re/im)
        del framed
        power = spec[..., 0].square()
        power.addcmul_(spec[..., 1], spec[..., 1])  # re² + im² in two passes, not three
        del spec
        out = self._finish(power).transpose(1, 2).contiguous().cpu().numpy()  # (batch, n_mels, frames)
        return [np.ascontiguousarray(out[i, :, :n]) for i, n in enumerate(frames)]


def check_config(cfg: LogMelConfig, sample_rate: int) -> None:
    """Fail early on a configuration that would silently give nonsense, naming the key."""
    if not 0 < cfg.win_length <= cfg.n_fft:
        raise ValueError(f"features.logmel.win_length: {cfg.win_length} must be in 1..n_fft ({cfg.n_fft})")
    if cfg.hop_length <= 0:
        raise ValueError(f"features.logmel.hop_length: {cfg.hop_length} must be positive")
    if cfg.n_mels <= 0:
        raise ValueError(f"features.logmel.n_mels: {cfg.n_mels} must be positive")
    if not 0 <= cfg.f_min < cfg.f_max <= sample_rate / 2:
        raise ValueError(f"features.logmel.f_min/f_max: need 0 <= f_min ({cfg.f_min}) < f_max ({cfg.f_max}) "
                         f"<= audio.sample_rate/2 ({sample_rate / 2})")
    if cfg.log_floor <= 0:
        raise ValueError(f"features.logmel.log_floor: {cfg.log_floor} must be > 0")
