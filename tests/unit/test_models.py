"""Recognizer modules and the input pipeline: shapes, the encoder/head contract, masking, stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affectflow.config import CnnConfig, MlpConfig, SpecAugmentConfig, TrainConfig
from affectflow.models import arch_config, build_model, feature_kind
from affectflow.models.data import (
    NormStats,
    augment,
    collate,
    compute_stats,
    length_batches,
    normalize,
    random_crop,
)
from affectflow.models.recognizer import AttentionPool

CNN = CnnConfig(channels=[4, 8, 8], gru_hidden=8, attention_hidden=8, dropout=0.0)


def test_cnn_bigru_contract_encoder_then_linear_head():
    m = build_model("cnn_bigru", CNN.model_dump(), input_dim=32, n_classes=5).eval()
    x = torch.randn(3, 32, 80)
    emb = m.encoder(x, torch.tensor([80, 60, 40]))
    assert emb.shape == (3, 16)
    assert isinstance(m.head, torch.nn.Linear) and m.head.in_features == 16 and m.head.out_features == 5
    assert torch.allclose(m(x, torch.tensor([80, 60, 40])), m.head(emb))


def test_mlp_contract_and_feature_kinds():
    m = build_model("egemaps_mlp", MlpConfig(hidden=[16, 8]).model_dump(), input_dim=88, n_classes=4).eval()
    assert m.encoder(torch.randn(5, 88)).shape == (5, 8)
    assert m(torch.randn(5, 88)).shape == (5, 4)
    assert feature_kind("cnn_bigru") == "logmel" and feature_kind("egemaps_mlp") == "egemaps"
    with pytest.raises(ValueError, match="unknown model architecture 'transformer'"):
        feature_kind("transformer")


def test_padding_does_not_change_a_clips_output():
    """A clip alone and the same clip zero-padded inside a batch give the same logits (masking)."""
    torch.manual_seed(0)
    m = build_model("cnn_bigru", CNN.model_dump(), input_dim=32, n_classes=3).eval()
    short = torch.randn(1, 32, 48)
    alone = m(short, torch.tensor([48]))
    batch = torch.zeros(2, 32, 96)
    batch[0, :, :48] = short[0]
    batch[1] = torch.randn(32, 96)
    padded = m(batch, torch.tensor([48, 96]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    unmasked = m(batch[:1], None)  # without lengths the padding is seen, and it shows
    assert not torch.allclose(alone[0], unmasked[0], atol=1e-5)


def test_clips_shorter_than_the_pooling_stack_still_work():
    m = build_model("cnn_bigru", CNN.model_dump(), input_dim=32, n_classes=3).eval()
    assert m(torch.randn(2, 32, 5), torch.tensor([5, 3])).shape == (2, 3)


def test_too_many_pooling_blocks_for_the_mel_bins_is_an_error():
    with pytest.raises(ValueError, match="no frequency bins"):
        build_model("cnn_bigru", CnnConfig(channels=[4, 4, 4, 4]).model_dump(), input_dim=8, n_classes=2)


def test_attention_pool_ignores_masked_steps():
    pool = AttentionPool(4, 4)
    h = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, False, False, False]])
    out = pool(h, mask)
    h2 = h.clone()
    h2[0, 2:] = 100.0  # garbage in masked steps
    assert torch.allclose(out, pool(h2, mask))


def test_arch_config_follows_the_chosen_model():
    tc = TrainConfig(model="egemaps_mlp")
    assert arch_config(tc) == tc.mlp.model_dump()
    assert arch_config(TrainConfig(model="cnn_bigru")) == TrainConfig().cnn.model_dump()
    assert arch_config(TrainConfig(model="compare_mlp")) == TrainConfig().mlp.model_dump()
    # the default, ssl_linear, takes its layers from its features (the ssl kind's facts)
    facts = {"n_layers": 4, "states": [0, 1, 2, 3], "encoder_states": 7}
    assert arch_config(TrainConfig(), facts) == {**TrainConfig().ssl_linear.model_dump(), **facts}
    with pytest.raises(ValueError, match="its 'n_layers' comes from its features"):
        arch_config(TrainConfig())


def test_global_stats_are_per_bin_over_all_frames():
    a = np.array([[1.0, 3.0], [0.0, 0.0]])
    b = np.array([[5.0], [2.0]])
    s = compute_stats([a, b], "global")
    assert s.mean == pytest.approx([3.0, 2 / 3])
    assert s.std[0] == pytest.approx(np.std([1, 3, 5]))
    n = normalize(np.concatenate([a, b], axis=1), s)
    assert n[0].mean() == pytest.approx(0.0, abs=1e-6) and n[0].std() == pytest.approx(1.0, abs=1e-5)
    assert s.std[1] > 0  # floor: constant features never divide by zero
    assert NormStats.from_dict(s.as_dict()) == s


def test_utterance_normalisation_uses_each_clips_own_statistics():
    x = np.random.default_rng(0).normal(5, 3, (4, 50)).astype(np.float32)
    n = normalize(x, compute_stats([x], "utterance"))
    assert np.allclose(n.mean(axis=1), 0, atol=1e-5) and np.allclose(n.std(axis=1), 1, atol=1e-4)


def test_crop_collate_and_length_batches():
    rng = np.random.default_rng(0)
    x = np.arange(20, dtype=np.float32).reshape(2, 10)
    c = random_crop(x, 4, rng)
    assert c.shape == (2, 4) and c[0, 1] - c[0, 0] == 1
    assert random_crop(x, 40, rng).shape == (2, 10)
    batch, lengths = collate([x, x[:, :3]])
    assert batch.shape == (2, 2, 10) and lengths.tolist() == [10, 3] and float(batch[1, :, 3:].abs().sum()) == 0
    vec, none = collate([np.ones(3), np.zeros(3)])
    assert vec.shape == (2, 3) and none is None
    batches = list(length_batches([5, 1, 9, 3], 2))
    assert [b.tolist() for b in batches] == [[1, 3], [0, 2]]


def test_augment_is_seeded_masks_and_keeps_padding_zero():
    cfg = SpecAugmentConfig(time_masks=2, time_width=10, freq_masks=2, freq_width=4, noise_std=0.1, freq_shift=2)
    x = torch.randn(3, 16, 50)
    lengths = torch.tensor([50, 40, 20])
    x[1, :, 40:] = 0
    x[2, :, 20:] = 0
    a = augment(x, lengths, cfg, torch.Generator().manual_seed(1))
    b = augment(x, lengths, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    assert float(a[2, :, 20:].abs().sum()) == 0
    off = SpecAugmentConfig(time_masks=0, freq_masks=0, noise_std=0.0, freq_shift=0)
    assert torch.equal(augment(x, lengths, off, torch.Generator()), x)
