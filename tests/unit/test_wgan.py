"""Conditional WGAN-GP: the gradient penalty, shapes, and label conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from affectflow.config import AugmentConfig
from affectflow.models.wgan import (
    ConvGenerator,
    MlpGenerator,
    build_critic,
    build_generator,
    gradient_penalty,
    train_wgan,
)


class LinearCritic(nn.Module):
    """D(x, y) = w·x: its gradient w.r.t. x is w everywhere, so ‖∇D‖ = ‖w‖ exactly."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


@pytest.mark.parametrize("norm", [0.5, 1.0, 3.0])
def test_gradient_penalty_of_linear_critic_is_squared_norm_gap(norm: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(6)
    w = w / w.norm() * norm
    real, fake = torch.randn(16, 6), torch.randn(16, 6)
    gp = gradient_penalty(LinearCritic(w), real, fake, torch.zeros(16, dtype=torch.long))
    assert gp.item() == pytest.approx((norm - 1.0) ** 2, abs=1e-5)


def test_gradient_penalty_on_segments_and_backprop_to_critic() -> None:
    # 2-D samples are flattened for the norm; the penalty must be differentiable w.r.t. the critic.
    w = torch.full((2 * 3,), 1.0, requires_grad=False)
    critic = LinearCritic(w.clone())
    gp = gradient_penalty(critic, torch.randn(4, 2, 3), torch.randn(4, 2, 3), torch.zeros(4, dtype=torch.long))
    expected = (np.sqrt(6.0) - 1) ** 2
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    gp.backward()
    # d/dw (‖w‖ − 1)² = 2(‖w‖ − 1) w/‖w‖
    assert torch.allclose(critic.w.grad, 2 * (np.sqrt(6.0) - 1) * torch.ones(6) / np.sqrt(6.0), atol=1e-5)


def test_gradient_penalty_is_zero_for_nonlinear_critic_only_where_unit_gradient() -> None:
    # D(x) = ‖x‖ has unit gradient norm everywhere except 0 -> penalty ≈ 0.
    class NormCritic(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).norm(dim=1)

    gp = gradient_penalty(NormCritic(), torch.randn(32, 5) + 5, torch.randn(32, 5) + 5, torch.zeros(32, dtype=torch.long))
    assert gp.item() == pytest.approx(0.0, abs=1e-8)


def _cfg(**kw) -> AugmentConfig:
    base = {"latent_dim": 8, "hidden": [32, 32], "conv_channels": [4, 8], "batch_size": 32, "seed": 0}
    return AugmentConfig(**{**base, **kw})


def test_shapes_vector_and_segment() -> None:
    cfg = _cfg()
    g = build_generator((88,), 4, cfg)
    assert isinstance(g, MlpGenerator)
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    assert g(z, y).shape == (5, 88)
    assert build_critic((88,), 4, cfg)(torch.randn(5, 88), y).shape == (5,)
    # Sizes not divisible by 2**len(conv_channels) are cropped to the exact segment shape.
    gc = build_generator((18, 30), 4, cfg)
    assert isinstance(gc, ConvGenerator)
    x = gc(z, y)
    assert x.shape == (5, 18, 30)
    assert build_critic((18, 30), 4, cfg)(x, y).shape == (5,)


def test_label_changes_output_for_the_same_noise() -> None:
    g = build_generator((10,), 3, _cfg()).eval()
    z = torch.randn(1, 8).repeat(3, 1)
    x = g(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])



def test_trained_generator_follows_its_label(one_torch_thread: None) -> None:
    """Two well-separated classes: samples conditioned on a class land near that class's mean."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    means = np.array([[2.0, 2.0, 0.0, 0.0], [-2.0, -2.0, 0.0, 0.0]], dtype=np.float32)
    y = np.repeat([0, 1], 128)
    X = (means[y] + 0.3 * rng.standard_normal((256, 4))).astype(np.float32)
    cfg = _cfg(epochs=40, n_critic=2, lr=1e-3, batch_size=64)
    gan = train_wgan(X, y, 2, cfg, torch.device("cpu"))
    assert len(gan.history.losses) == 40 and len(gan.history.epoch_seconds) == 40
    labels = np.repeat([0, 1], 200)
    S = gan.sample(labels, seed=1)
    assert S.shape == (400, 4) and S.dtype == np.float32
    for c in (0, 1):
        d = np.linalg.norm(S[labels == c].mean(0)[None] - means, axis=1)
        assert d.argmin() == c, f"class {c} samples closer to the other class mean: {d}"
    assert gan.realness(X, y).shape == (256,)
    # Sampling is deterministic for a seed.
    assert np.array_equal(gan.sample(labels[:5], seed=3), gan.sample(labels[:5], seed=3))
