"""Class-conditional WGAN-GP (Gulrajani et al., 2017) over fixed-size feature samples.

Two architectures share one training loop: an MLP pair for vectors (standardised eGeMAPS
functionals, shape (d,)) and a convolutional pair for log-mel segments (shape (n_mels, frames)).
The generator is conditioned by concatenating a label embedding to the noise; the critic by
projection (Miyato & Koyama, 2018): score = w·h + <embed(y), h>. Projection keeps one scalar per
(sample, label), so the trained critic's score is also the realness score of the quality filter.
The critic has no batch norm (the gradient penalty is per sample). Inputs are standardised.

Optionally (vectors only) both are also conditioned on a style code s per sample (a speaker's code,
`affectflow.stages.augment.style`): the generator reads [z, embed(y), s] and the critic reads [x, s],
so the critic can reject a sample whose voice does not match its code and the generator has to use
s. Sampling with codes no training speaker has asks for a voice between the training speakers.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectflow.config import AugmentConfig
from affectflow.runtime.device import autocast, no_autocast
from affectflow.runtime.progress import progress

LEAK = 0.2
"""LeakyReLU slope used throughout (the usual GAN choice)."""


# ----------------------------------------------------------------------------- building blocks
def mlp(sizes: Sequence[int], final_act: bool = False) -> nn.Sequential:
    """Linear layers with LeakyReLU between them (and after the last one if `final_act`)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if final_act or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(LEAK))
    return nn.Sequential(*layers)


class MlpGenerator(nn.Module):
    """(z, y[, s]) -> x of shape (d,); s is a style code of `style_dim` values (0 = no style input)."""

    def __init__(self, latent_dim: int, n_classes: int, out_dim: int, hidden: Sequence[int], style_dim: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.style_dim = style_dim
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.net = mlp([2 * latent_dim + style_dim, *hidden, out_dim])

    def forward(self, z: torch.Tensor, y: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        parts = [z, self.embed(y)]
        if self.style_dim:
            if s is None:
                raise ValueError(f"this generator is style-conditioned: pass a style code of {self.style_dim} values")
            parts.append(s.to(z.dtype))
        return self.net(torch.cat(parts, dim=1))


class MlpTrunk(nn.Module):
    """x (d,) -> features h; shared by the WGAN critic and the AAEC classifier."""

    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = mlp([in_dim, *hidden], final_act=True)
        self.out_dim = hidden[-1] if hidden else in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvGenerator(nn.Module):
    """(z, y) -> log-mel segment (n_mels, frames): a dense seed map upsampled by stride-2 transposed convs."""

    def __init__(self, latent_dim: int, n_classes: int, shape: tuple[int, int], channels: Sequence[int]):
        super().__init__()
        self.latent_dim = latent_dim
        self.shape = shape
        n_up = len(channels)
        scale = 2**n_up
        self.seed_hw = (math.ceil(shape[0] / scale), math.ceil(shape[1] / scale))
        chans = list(reversed(channels))  # widest first, mirroring the critic
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.fc = nn.Linear(2 * latent_dim, chans[0] * self.seed_hw[0] * self.seed_hw[1])
        blocks: list[nn.Module] = []
        for a, b in zip(chans, [*chans[1:], chans[-1]], strict=True):
            blocks += [nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1),
                       nn.BatchNorm2d(b), nn.LeakyReLU(LEAK)]
        self.up = nn.Sequential(*blocks)
        self.out = nn.Conv2d(chans[-1], 1, kernel_size=3, padding=1)
        self.seed_channels = chans[0]

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], dim=1))
        h = F.leaky_relu(h, LEAK).view(-1, self.seed_channels, *self.seed_hw)
        x = self.out(self.up(h))
        return x[:, 0, : self.shape[0], : self.shape[1]]


class ConvTrunk(nn.Module):
    """Log-mel segment (n_mels, frames) -> features h via stride-2 convs and global average pooling."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        prev = 1
        for c in channels:
            layers += [nn.Conv2d(prev, c, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(LEAK)]
            prev = c
        self.net = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(1)).mean(dim=(2, 3))


class ProjectionCritic(nn.Module):
    """score(x, y) = w·h(x) + <embed(y), h(x)>: one unbounded scalar per sample (Wasserstein critic).

    With `style_dim` > 0 the trunk reads [x, s] (its input width must include the code)."""

    def __init__(self, trunk: nn.Module, n_classes: int, style_dim: int = 0):
        super().__init__()
        self.trunk = trunk
        self.style_dim = style_dim
        self.linear = nn.Linear(trunk.out_dim, 1)
        self.embed = nn.Embedding(n_classes, trunk.out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        if self.style_dim:
            if s is None:
                raise ValueError(f"this critic is style-conditioned: pass a style code of {self.style_dim} values")
            x = torch.cat([x, s.to(x.dtype)], dim=1)
        h = self.trunk(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def _vectors_only(sample_shape: tuple[int, ...], style_dim: int) -> None:
    if style_dim and len(sample_shape) != 1:
        raise ValueError(f"augment.style: style codes need vector samples, got sample shape {sample_shape}")


def build_generator(
    sample_shape: tuple[int, ...], n_classes: int, cfg: AugmentConfig, style_dim: int = 0,
) -> nn.Module:
    """MLP generator for vectors, conv generator for 2-D segments (style codes: vectors only)."""
    _vectors_only(sample_shape, style_dim)
    if len(sample_shape) == 1:
        return MlpGenerator(cfg.latent_dim, n_classes, sample_shape[0], cfg.hidden, style_dim)
    return ConvGenerator(cfg.latent_dim, n_classes, (sample_shape[0], sample_shape[1]), cfg.conv_channels)


def build_trunk(sample_shape: tuple[int, ...], cfg: AugmentConfig, style_dim: int = 0) -> nn.Module:
    _vectors_only(sample_shape, style_dim)
    if len(sample_shape) == 1:
        return MlpTrunk(sample_shape[0] + style_dim, cfg.hidden)
    return ConvTrunk(cfg.conv_channels)


def build_critic(
    sample_shape: tuple[int, ...], n_classes: int, cfg: AugmentConfig, style_dim: int = 0,
) -> ProjectionCritic:
    return ProjectionCritic(build_trunk(sample_shape, cfg, style_dim), n_classes, style_dim)


# ----------------------------------------------------------------------------- the loss
def gradient_penalty(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E[(‖∇ₓ̂ D(x̂, y)‖₂ − 1)²] at random interpolates x̂ = εx + (1−ε)x̃ (float32, outside autocast).

    The penalty softly enforces the 1-Lipschitz constraint the Wasserstein dual needs; it is
    computed in float32 because double back-propagation through bf16 is where GP training goes unstable.
    """
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(shape, device=real.device, generator=generator)
    x_hat = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
    with no_autocast(real.device):
        score = critic(x_hat, y).float()
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


# ----------------------------------------------------------------------------- training
@dataclass
class TrainHistory:
    """Per-epoch mean losses and wall-clock seconds (for the report and benchmarks)."""

    losses: list[dict[str, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_cpu_seconds: list[float] = field(default_factory=list)
    """CPU time of this process per epoch (on a shared machine wall time mostly measures the neighbours)."""


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled index batches covering every sample once (the last one may be smaller, never < 2)."""
    perm = rng.permutation(n)
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        if len(idx) >= 2:
            yield idx


@dataclass
class Wgan:
    """A trained conditional WGAN-GP: sample by label, score by critic."""

    generator: nn.Module
    critic: ProjectionCritic
    device: torch.device
    latent_dim: int
    history: TrainHistory
    batch_size: int = 256
    style_dim: int = 0
    """Length of the style code G and D are conditioned on (0 = emotion only)."""

    def _styles(self, styles: np.ndarray | None, n: int, i: int) -> torch.Tensor | None:
        """Batch [i, i + batch_size) of the style codes, checked against the model's conditioning."""
        if not self.style_dim:
            if styles is not None:
                raise ValueError("this WGAN is not style-conditioned (augment.style: none): styles must be None")
            return None
        if styles is None or styles.shape != (n, self.style_dim):
            got = None if styles is None else styles.shape
            raise ValueError(f"style-conditioned WGAN: styles must have shape ({n}, {self.style_dim}), got {got}")
        return torch.as_tensor(styles[i : i + self.batch_size], dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int, styles: np.ndarray | None = None) -> np.ndarray:
        """One standardised sample per requested label (and style code, when style-conditioned).

        Deterministic for a seed; the noise z does not depend on `styles`, so the same seed with
        other codes gives the same z and labels in other voices."""
        self.generator.eval()
        g = torch.Generator(device="cpu").manual_seed(seed)
        out = []
        for i in range(0, len(labels), self.batch_size):
            y = torch.as_tensor(labels[i : i + self.batch_size], dtype=torch.long, device=self.device)
            z = torch.randn(len(y), self.latent_dim, generator=g).to(self.device)
            s = self._styles(styles, len(labels), i)
            x = self.generator(z, y) if s is None else self.generator(z, y, s)
            out.append(x.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)

    @torch.no_grad()
    def realness(self, X: np.ndarray, labels: np.ndarray, styles: np.ndarray | None = None) -> np.ndarray:
        """Critic score of each (sample, label[, style code]); higher = more real."""
        self.critic.eval()
        out = []
        for i in range(0, len(X), self.batch_size):
            x = torch.as_tensor(X[i : i + self.batch_size], dtype=torch.float32, device=self.device)
            y = torch.as_tensor(labels[i : i + self.batch_size], dtype=torch.long, device=self.device)
            out.append(self.critic(x, y, self._styles(styles, len(X), i)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def train_wgan(
    X: np.ndarray, y: np.ndarray, n_classes: int, cfg: AugmentConfig, device: torch.device,
    styles: np.ndarray | None = None,
) -> Wgan:
    """Train G and D on standardised samples X (n, d) or (n, n_mels, frames) with labels y.

    One epoch = one pass of the critic over the real data; the generator steps after every
    `n_critic` critic steps. Adam with `adam_betas` for both, as in the WGAN-GP paper.
    `styles` (n, style_dim), vectors only: each real sample's style code; G and D are then also
    conditioned on it (fakes in a critic step get the codes of the real batch; generator steps draw
    (label, code) pairs of random real samples, so they follow the real joint distribution).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    shape = tuple(X.shape[1:])
    style_dim = 0 if styles is None else int(styles.shape[1])
    if styles is not None and len(styles) != len(X):
        raise ValueError(f"train_wgan: {len(styles)} style codes for {len(X)} samples")
    G = build_generator(shape, n_classes, cfg, style_dim).to(device)
    D = build_critic(shape, n_classes, cfg, style_dim).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    St = None if styles is None else torch.as_tensor(styles, dtype=torch.float32, device=device)

    def gen(z: torch.Tensor, lab: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        return G(z, lab) if s is None else G(z, lab, s)  # the conv generator takes no style
    # Labels for generator steps follow the real label distribution, so rare classes are not over-fitted.
    class_p = np.bincount(y, minlength=n_classes) / len(y)
    history = TrainHistory()
    amp = cfg.mixed_precision
    step = 0
    for _epoch in progress(range(cfg.epochs), desc="WGAN-GP", unit="epoch"):
        t0, c0 = time.perf_counter(), time.process_time()
        sums = {"critic": 0.0, "gp": 0.0, "wasserstein": 0.0, "generator": 0.0}
        n_d = n_g = 0
        G.train()
        D.train()
        for idx in batches(len(X), cfg.batch_size, rng):
            real, lab = Xt[idx], yt[idx]
            s = None if St is None else St[idx]
            z = torch.randn(len(idx), cfg.latent_dim, device=device)
            with torch.no_grad(), autocast(device, amp):
                fake = gen(z, lab, s).float()
            with autocast(device, amp):
                d_real = D(real, lab, s).float().mean()
                d_fake = D(fake, lab, s).float().mean()
            gp = gradient_penalty(lambda x_, y_, s_=s: D(x_, y_, s_), real, fake, lab)
            loss_d = d_fake - d_real + cfg.gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            sums["critic"] += loss_d.item()
            sums["gp"] += gp.item()
            sums["wasserstein"] += (d_real - d_fake).item()
            n_d += 1
            step += 1
            if step % cfg.n_critic == 0:
                if St is None:
                    lab_g = torch.as_tensor(rng.choice(n_classes, size=cfg.batch_size, p=class_p), device=device)
                    s_g = None
                else:
                    pick = torch.as_tensor(rng.integers(0, len(X), size=cfg.batch_size), device=device)
                    lab_g, s_g = yt[pick], St[pick]
                z = torch.randn(cfg.batch_size, cfg.latent_dim, device=device)
                with autocast(device, amp):
                    loss_g = -D(gen(z, lab_g, s_g), lab_g, s_g).float().mean()
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                sums["generator"] += loss_g.item()
                n_g += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        history.epoch_seconds.append(time.perf_counter() - t0)
        history.epoch_cpu_seconds.append(time.process_time() - c0)
        history.losses.append({
            "critic": sums["critic"] / max(n_d, 1), "gp": sums["gp"] / max(n_d, 1),
            "wasserstein": sums["wasserstein"] / max(n_d, 1), "generator": sums["generator"] / max(n_g, 1),
        })
    return Wgan(G.eval(), D.eval(), device, cfg.latent_dim, history, style_dim=style_dim)
