"""AAEC: shapes, the X' = mean(Dec(E), Dec(Enc(x))) construction, phase alternation, label inheritance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affectflow.config import AugmentConfig
from affectflow.models.aaec import Aaec, BiGruEncoder, phase_schedule, train_aaec


def _cfg(**kw) -> AugmentConfig:
    base = {"latent_dim": 6, "hidden": [16, 16], "conv_channels": [4, 8], "aaec_gru_hidden": 8,
            "aaec_token_size": 8, "batch_size": 32, "lr": 1e-3, "seed": 0}
    return AugmentConfig(**{**base, **kw})


def test_encoder_reads_vectors_as_padded_token_sequences() -> None:
    enc = BiGruEncoder((88,), latent_dim=6, hidden=8, token_size=8)
    seq = enc.sequence(torch.arange(88.0)[None])
    assert seq.shape == (1, 11, 8)
    enc = BiGruEncoder((10,), latent_dim=6, hidden=8, token_size=4)
    seq = enc.sequence(torch.ones(2, 10))
    assert seq.shape == (2, 3, 4) and seq[0, -1].tolist() == [1, 1, 0, 0]  # zero padding at the end
    assert enc(torch.randn(2, 10)).shape == (2, 6)
    seg = BiGruEncoder((12, 20), latent_dim=6, hidden=8, token_size=8)
    assert seg.sequence(torch.randn(3, 12, 20)).shape == (3, 20, 12)  # frame by frame
    assert seg(torch.randn(3, 12, 20)).shape == (3, 6)


@pytest.mark.parametrize("shape", [(20,), (12, 24)])
def test_synthesize_is_the_mean_of_two_decodings(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = Aaec(shape, 3, _cfg()).eval()
    x, y, e = torch.randn(4, *shape), torch.tensor([0, 1, 2, 1]), torch.randn(4, 6)
    out = model.synthesize(x, y, e)
    assert out.shape == (4, *shape)
    expected = 0.5 * (model.decoder(e, y) + model.decoder(model.encoder(x), y))
    assert torch.allclose(out, expected, atol=1e-6)
    logits, rf = model.classifier(out)
    assert logits.shape == (4, 3) and rf.shape == (4,)


def test_phase_schedule() -> None:
    assert phase_schedule(2, 1, 3) == ["encoder", "encoder", "decoder", "classifier", "classifier", "classifier"]


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_each_phase_trains_only_its_own_parts(one_torch_thread: None) -> None:
    """Epoch 0 = encoder (+ latent discriminator), 1 = decoder, 2 = classifier."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 16)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    torch.manual_seed(0)
    fresh = Aaec((16,), 2, _cfg())
    for epochs, moved in [(1, {"encoder", "latent_disc"}), (2, {"encoder", "latent_disc", "decoder"}),
                          (3, {"encoder", "latent_disc", "decoder", "classifier"})]:
        trained = train_aaec(X, y, 2, _cfg(epochs=epochs), torch.device("cpu")).model
        for part in ("encoder", "latent_disc", "decoder", "classifier"):
            same = not _changed(_params(getattr(fresh, part)), getattr(trained, part))
            assert same == (part not in moved), f"after {epochs} epoch(s) {part} changed={not same}"


def test_samples_inherit_labels_and_stay_near_their_class(one_torch_thread: None) -> None:
    rng = np.random.default_rng(1)
    means = np.zeros((2, 16), np.float32)
    means[0, :4], means[1, :4] = 2.0, -2.0
    y = np.repeat([0, 1], 96)
    X = (means[y] + 0.3 * rng.standard_normal((192, 16))).astype(np.float32)
    trained = train_aaec(X, y, 2, _cfg(epochs=30), torch.device("cpu"))
    assert len(trained.history.losses) == 30
    phases = [k for row in trained.history.losses for k in row if k.startswith("phase_")]
    assert phases[:3] == ["phase_encoder", "phase_decoder", "phase_classifier"]
    labels = np.array([0] * 50 + [1] * 50)
    S = trained.sample(labels, seed=0)
    assert S.shape == (100, 16)
    for c in (0, 1):
        d = np.linalg.norm(S[labels == c].mean(0)[None] - means, axis=1)
        assert d.argmin() == c, f"class {c} samples are nearer the other class: {d}"
    assert trained.realness(S, labels).shape == (100,)
    # Its jointly trained classifier is a recognizer of the real classes (AAEC's own use of it).
    X_new = (means[labels] + 0.3 * rng.standard_normal((100, 16))).astype(np.float32)
    P = trained.emotion_probs(X_new)
    assert P.shape == (100, 2) and np.allclose(P.sum(1), 1.0, atol=1e-5)
    assert (P.argmax(1) == labels).mean() > 0.9
    assert np.array_equal(trained.sample(labels[:4], seed=7), trained.sample(labels[:4], seed=7))


def test_sampling_a_class_without_real_data_is_an_error() -> None:
    X = np.zeros((8, 16), np.float32)
    trained = train_aaec(X, np.zeros(8, np.int64), 2, _cfg(epochs=1), torch.device("cpu"))
    with pytest.raises(ValueError, match="no real training sample of class 1"):
        trained.sample(np.array([1]), seed=0)
