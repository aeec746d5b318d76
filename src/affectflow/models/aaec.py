"""AAEC: an adversarial-autoencoder classifier that makes synthetic samples by latent mixing.

Parts (all on standardised features):
  encoder  BiGRU -> z. Log-mel segments are read frame by frame; vectors are read as a sequence
           of `aaec_token_size`-value tokens (zero-padded), so one encoder serves both kinds.
  latent discriminator  tells z = Enc(x) from Gaussian noise E ~ N(0, I); the encoder learns to fool
           it, which pulls the aggregate posterior towards the prior so decoding E is meaningful.
  decoder  Dec(z, y): the WGAN generator architecture (MLP or conv), conditioned on the label
           (a supervised AAE: z carries style, y the class), so Dec(E, y) is a class-y sample.
  classifier  a trunk with an emotion head and an extra real/fake head.
A synthetic sample is X' = (Dec(E, y) + Dec(Enc(x), y)) / 2 for a real source x of class y and
inherits y: half a reconstruction of x, half a random draw, i.e. near the data but off existing
samples. Training alternates phases by epoch: K1 epochs encoder + latent discriminator
(reconstruction through the frozen decoder + adversarial), K2 epochs decoder (reconstruction +
fooling the real/fake head with X'), K3 epochs classifier (emotion CE on real samples + real/fake
on real vs X'). The real/fake logit is the sample's realness score in the quality filter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectflow.config import AugmentConfig
from affectflow.models.wgan import TrainHistory, batches, build_generator, build_trunk, mlp
from affectflow.runtime.device import autocast
from affectflow.runtime.progress import progress


class BiGruEncoder(nn.Module):
    """x -> z via a bidirectional GRU over a sequence view of x (final states of both directions)."""

    def __init__(self, sample_shape: tuple[int, ...], latent_dim: int, hidden: int, token_size: int):
        super().__init__()
        self.sample_shape = sample_shape
        if len(sample_shape) == 1:
            self.token = token_size
            self.steps = math.ceil(sample_shape[0] / token_size)
            step_dim = token_size
        else:
            self.token = 0
            step_dim = sample_shape[0]  # n_mels per frame
        self.gru = nn.GRU(step_dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, latent_dim)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, steps, token) zero-padded; (B, n_mels, frames) -> (B, frames, n_mels)."""
        if self.token:
            pad = self.steps * self.token - x.shape[1]
            return F.pad(x, (0, pad)).view(x.shape[0], self.steps, self.token)
        return x.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.sequence(x).float())
        return self.out(torch.cat([h[0], h[1]], dim=1))


class AaecClassifier(nn.Module):
    """Shared trunk with an emotion head (n_classes logits) and a real/fake head (one logit)."""

    def __init__(self, trunk: nn.Module, n_classes: int):
        super().__init__()
        self.trunk = trunk
        self.emotion = nn.Linear(trunk.out_dim, n_classes)
        self.real_fake = nn.Linear(trunk.out_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.emotion(h), self.real_fake(h).squeeze(1)


class Aaec(nn.Module):
    """All AAEC parts in one module (one state_dict, one `.to(device)`)."""

    def __init__(self, sample_shape: tuple[int, ...], n_classes: int, cfg: AugmentConfig):
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.encoder = BiGruEncoder(sample_shape, cfg.latent_dim, cfg.aaec_gru_hidden, cfg.aaec_token_size)
        self.latent_disc = mlp([cfg.latent_dim, *cfg.hidden, 1])
        self.decoder = build_generator(sample_shape, n_classes, cfg)
        self.classifier = AaecClassifier(build_trunk(sample_shape, cfg), n_classes)

    def synthesize(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """X' = (Dec(E, y) + Dec(Enc(x), y)) / 2, labelled y."""
        return 0.5 * (self.decoder(noise, y) + self.decoder(self.encoder(x), y))


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def phase_schedule(k1: int, k2: int, k3: int) -> list[str]:
    """One cycle of phases, one entry per epoch: K1 x "encoder", K2 x "decoder", K3 x "classifier"."""
    return ["encoder"] * k1 + ["decoder"] * k2 + ["classifier"] * k3


def _no_style(styles: np.ndarray | None) -> None:
    """AAEC is emotion-conditioned only (the config refuses augment.style with it)."""
    if styles is not None:
        raise ValueError("AAEC is not style-conditioned: styles must be None (augment.style: none)")


@dataclass
class TrainedAaec:
    """A trained AAEC bound to its real training set (X' needs real sources)."""

    model: Aaec
    X: np.ndarray
    y: np.ndarray
    device: torch.device
    history: TrainHistory
    batch_size: int = 256

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int, styles: np.ndarray | None = None) -> np.ndarray:
        """One X' per requested label, each from a random real source of that label."""
        _no_style(styles)
        self.model.eval()
        rng = np.random.default_rng(seed)
        g = torch.Generator(device="cpu").manual_seed(seed)
        by_class = {c: np.flatnonzero(self.y == c) for c in np.unique(labels)}
        for c, idx in by_class.items():
            if len(idx) == 0:
                raise ValueError(f"AAEC: no real training sample of class {c} to synthesize from")
        src = np.array([rng.choice(by_class[c]) for c in labels], dtype=np.int64)
        out = []
        for i in range(0, len(labels), self.batch_size):
            s = src[i : i + self.batch_size]
            x = torch.as_tensor(self.X[s], dtype=torch.float32, device=self.device)
            yb = torch.as_tensor(labels[i : i + self.batch_size], dtype=torch.long, device=self.device)
            e = torch.randn(len(s), self.model.latent_dim, generator=g).to(self.device)
            out.append(self.model.synthesize(x, yb, e).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)

    @torch.no_grad()
    def emotion_probs(self, X: np.ndarray) -> np.ndarray:
        """(n, C) class probabilities of the jointly trained classifier: AAEC used as a recognizer."""
        self.model.eval()
        out = []
        for i in range(0, len(X), self.batch_size):
            x = torch.as_tensor(X[i : i + self.batch_size], dtype=torch.float32, device=self.device)
            out.append(torch.softmax(self.model.classifier(x)[0].float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.classifier.emotion.out_features), np.float32)

    @torch.no_grad()
    def realness(self, X: np.ndarray, labels: np.ndarray, styles: np.ndarray | None = None) -> np.ndarray:
        """Real/fake logit of the classifier (the label is not used: the head is unconditional)."""
        del labels
        _no_style(styles)
        self.model.eval()
        out = []
        for i in range(0, len(X), self.batch_size):
            x = torch.as_tensor(X[i : i + self.batch_size], dtype=torch.float32, device=self.device)
            out.append(self.model.classifier(x)[1].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def train_aaec(
    X: np.ndarray, y: np.ndarray, n_classes: int, cfg: AugmentConfig, device: torch.device,
) -> TrainedAaec:
    """Alternate the K1 / K2 / K3 phases for `cfg.epochs` epochs on standardised X with labels y."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    shape = tuple(X.shape[1:])
    model = Aaec(shape, n_classes, cfg).to(device)
    betas = tuple(cfg.adam_betas)
    opts = {
        "encoder": torch.optim.Adam(model.encoder.parameters(), lr=cfg.lr, betas=betas),
        "latent_disc": torch.optim.Adam(model.latent_disc.parameters(), lr=cfg.lr, betas=betas),
        "decoder": torch.optim.Adam(model.decoder.parameters(), lr=cfg.lr, betas=betas),
        "classifier": torch.optim.Adam(model.classifier.parameters(), lr=cfg.lr, betas=betas),
    }
    parts: dict[str, Sequence[nn.Module]] = {
        "encoder": (model.encoder, model.latent_disc),
        "decoder": (model.decoder,),
        "classifier": (model.classifier,),
    }
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    schedule = phase_schedule(cfg.aaec_k1, cfg.aaec_k2, cfg.aaec_k3)
    history = TrainHistory()
    amp = cfg.mixed_precision
    w = cfg.aaec_adv_weight
    for epoch in progress(range(cfg.epochs), desc="AAEC", unit="epoch"):
        phase = schedule[epoch % len(schedule)]
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        for name, mods in parts.items():
            for m in mods:
                _set_trainable(m, name == phase)
        sums: dict[str, float] = {}
        n = 0
        for idx in batches(len(X), cfg.batch_size, rng):
            x, lab = Xt[idx], yt[idx]
            e = torch.randn(len(idx), cfg.latent_dim, device=device)
            losses = _phase_step(model, phase, x, lab, e, opts, w, device, amp, cfg.aaec_emotion_on_synthetic)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        history.epoch_seconds.append(time.perf_counter() - t0)
        history.epoch_cpu_seconds.append(time.process_time() - c0)
        history.losses.append({"phase_" + phase: 1.0, **{k: v / max(n, 1) for k, v in sums.items()}})
    for m in model.modules():
        _set_trainable(m, True)
    return TrainedAaec(model.eval(), X, y, device, history)


def _phase_step(
    model: Aaec, phase: str, x: torch.Tensor, y: torch.Tensor, e: torch.Tensor,
    opts: dict[str, torch.optim.Optimizer], w: float, device: torch.device, amp: bool,
    emotion_on_synthetic: bool = True,
) -> dict[str, float]:
    """One optimisation step of the current phase; returns its losses."""
    ones = torch.ones(len(x), device=device)
    zeros = torch.zeros(len(x), device=device)
    bce = F.binary_cross_entropy_with_logits
    if phase == "encoder":
        # Latent discriminator: prior samples E are "real", encodings are "fake".
        z = model.encoder(x)
        d_loss = bce(model.latent_disc(e).squeeze(1), ones) + bce(model.latent_disc(z.detach()).squeeze(1), zeros)
        opts["latent_disc"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["latent_disc"].step()
        # Encoder: reconstruct through the (frozen) decoder and fool the latent discriminator.
        with autocast(device, amp):
            recon = F.mse_loss(model.decoder(z, y).float(), x)
        adv = bce(model.latent_disc(z).squeeze(1), ones)
        loss = recon + w * adv
        opts["encoder"].zero_grad(set_to_none=True)
        loss.backward()
        opts["encoder"].step()
        return {"latent_disc": d_loss.item(), "recon": recon.item(), "encoder_adv": adv.item()}
    if phase == "decoder":
        with torch.no_grad():
            z = model.encoder(x)
        with autocast(device, amp):
            recon = F.mse_loss(model.decoder(z, y).float(), x)
            x_syn = 0.5 * (model.decoder(e, y) + model.decoder(z, y))
            adv = bce(model.classifier(x_syn)[1].float(), ones)
        loss = recon + w * adv
        opts["decoder"].zero_grad(set_to_none=True)
        loss.backward()
        opts["decoder"].step()
        return {"recon": recon.item(), "decoder_adv": adv.item()}
    # classifier
    with torch.no_grad():
        x_syn = model.synthesize(x, y, e).float()
    with autocast(device, amp):
        logits, rf_real = model.classifier(x)
        logits_syn, rf_fake = model.classifier(x_syn)
        ce = F.cross_entropy(logits.float(), y)
        if emotion_on_synthetic:  # the paper's classifier learns emotion from X and X'
            ce = 0.5 * (ce + F.cross_entropy(logits_syn.float(), y))
        rf = bce(rf_real.float(), ones) + bce(rf_fake.float(), zeros)
    loss = ce + rf
    opts["classifier"].zero_grad(set_to_none=True)
    loss.backward()
    opts["classifier"].step()
    return {"emotion_ce": ce.item(), "real_fake": rf.item()}
