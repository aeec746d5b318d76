"""DANN building blocks: the gradient-reversal layer, the λ schedule, the model's heads, domain
labels for several corpora, the target-test guard, the domain probe, and that adversarial
training does make domains harder to tell apart (in-memory data, no audio)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from base_settings import base_params

from affectflow.config import MlpConfig, PretrainConfig, TrainConfig
from affectflow.models.dann import Dann, GradientReversal, grad_reverse, grl_lambda
from affectflow.models.recognizer import EgemapsMlp
from affectflow.stages.pretrain.data import (
    PretrainDataError,
    TargetLeakageError,
    assert_no_target_test,
    resolve_domains,
    select_rows,
)
from affectflow.stages.pretrain.loop import LoopData, embed, train_dann
from affectflow.stages.pretrain.probe import domain_probe, proxy_a_distance


# ----------------------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("lambd", [0.0, 0.37, 1.0, 2.5])
def test_grl_is_identity_forward_and_scales_the_gradient_by_minus_lambda(lambd: float):
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -lambd * upstream)


def test_grl_module_reverses_only_what_flows_through_it():
    """Encoder weights get the emotion gradient as is and the domain gradient reversed."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 3)
    head = torch.nn.Linear(3, 1)
    x = torch.randn(8, 4)

    def grad_of(lambd: float | None) -> torch.Tensor:
        enc.zero_grad()
        head.zero_grad()
        z = enc(x)
        out = head(GradientReversal(lambd)(z) if lambd is not None else z).sum()
        out.backward()
        return enc.weight.grad.clone()

    plain = grad_of(None)
    assert torch.allclose(grad_of(0.5), -0.5 * plain, atol=1e-6)
    assert torch.allclose(grad_of(0.0), torch.zeros_like(plain))
    # The head itself is trained normally (its gradient is not reversed).
    enc.zero_grad()
    head.zero_grad()
    head(GradientReversal(0.5)(enc(x))).sum().backward()
    h = head.weight.grad.clone()
    head.zero_grad()
    head(enc(x)).sum().backward()
    assert torch.allclose(h, head.weight.grad)


# ----------------------------------------------------------------------------- λ schedule
def test_lambda_schedule_matches_the_formula_and_its_limits():
    for p in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert grl_lambda(p, 0.8) == pytest.approx(0.8 * (2 / (1 + math.exp(-10 * p)) - 1))
    assert grl_lambda(0.0, 1.0) == 0.0
    assert grl_lambda(1.0, 1.0) == pytest.approx(0.99991, abs=1e-5)
    assert grl_lambda(0.5, 2.0) == pytest.approx(2 * math.tanh(2.5))  # 2/(1+e^-x) - 1 = tanh(x/2)
    values = [grl_lambda(p / 20, 1.0) for p in range(21)]
    assert all(b > a for a, b in itertools.pairwise(values))  # strictly rising
    assert grl_lambda(-0.5, 1.0) == 0.0 and grl_lambda(3.0, 1.0) == grl_lambda(1.0, 1.0)  # clipped p
    assert grl_lambda(0.3, 1.0, gamma=1.0) < grl_lambda(0.3, 1.0, gamma=10.0)


def test_training_loop_follows_the_schedule():
    cfg = PretrainConfig(epochs=4, batch_size=8, lambda_max=0.6)
    data = _toy_data(n=32)
    model = Dann(EgemapsMlp(6, 2, MlpConfig(hidden=[8], dropout=0.0)), n_domains=2)
    hist = train_dann(model, data, cfg, TrainConfig(), torch.device("cpu"), adversarial=True, seed=0)
    steps = 4 * 4
    for epoch, row in enumerate(hist):  # λ of each epoch's last step
        p = ((epoch + 1) * 4 - 1) / (steps - 1)
        assert row["lambda"] == pytest.approx(grl_lambda(p, 0.6))
    assert hist[-1]["lambda"] == pytest.approx(grl_lambda(1.0, 0.6))


# ----------------------------------------------------------------------------- model
def test_dann_exposes_the_recognizer_and_its_heads():
    rec = EgemapsMlp(6, 4, MlpConfig(hidden=[16, 8], dropout=0.0))
    m = Dann(rec, n_domains=3, n_speakers=5, hidden=[7])
    out = m(torch.randn(10, 6))
    assert out.embedding.shape == (10, 8) and out.emotion.shape == (10, 4)
    assert out.domain.shape == (10, 3) and out.speaker.shape == (10, 5)
    assert m.encoder is rec.encoder and m.head is rec.head
    # The recognizer's state_dict is what a model folder stores: no DANN keys in it.
    assert set(m.recognizer.state_dict()) == set(EgemapsMlp(6, 4, MlpConfig(hidden=[16, 8])).state_dict())
    assert Dann(rec, n_domains=2).speaker_head is None
    with pytest.raises(TypeError, match="encoder"):
        Dann(torch.nn.Linear(3, 3), n_domains=2)


# ----------------------------------------------------------------------------- rows and domains
def _manifest() -> pd.DataFrame:
    """Two sources, two targets; every corpus has train / val / test speakers."""
    rows = []
    for corpus, role in (("ravdess", "source"), ("crema", "source"), ("emodb", "target"), ("mycsv", "target")):
        for s, split in enumerate(("train", "train", "val", "test")):
            for e in ("angry", "sad"):
                rows.append({"utt_id": f"{corpus}/{s}/{e}", "corpus": corpus, "role": role,
                             "speaker": f"{corpus}/{s}", "split": split, "emotion": e})
    return pd.DataFrame(rows)


def test_domain_labels_one_per_corpus_sources_first():
    df = _manifest()
    d = resolve_domains(df, PretrainConfig())
    assert d.names == ["crema", "ravdess", "emodb", "mycsv"]
    assert d.labels(["emodb", "ravdess", "mycsv", "crema", "emodb"]).tolist() == [2, 1, 3, 0, 2]
    assert d.is_target(["emodb", "crema", "mycsv"]).tolist() == [True, False, True]
    with pytest.raises(PretrainDataError, match="neither a DANN source nor a target"):
        d.labels(["iemocap"])
    # target_corpora picks targets explicitly; the other target-role corpus is then not used at all.
    only = resolve_domains(df, PretrainConfig(target_corpora=["mycsv"]))
    assert only.sources == ("crema", "ravdess") and only.targets == ("mycsv",)
    # A source-role corpus named as a target becomes a target (and stops being a source).
    moved = resolve_domains(df, PretrainConfig(target_corpora=["crema"]))
    assert moved.sources == ("ravdess",) and moved.targets == ("crema",)
    with pytest.raises(PretrainDataError, match=r"pretrain\.target_corpora"):
        resolve_domains(df, PretrainConfig(target_corpora=["nope"]))
    with pytest.raises(PretrainDataError, match="no target corpus"):
        resolve_domains(df[df["role"] == "source"], PretrainConfig())


def test_adaptation_uses_target_training_speakers_only():
    df = _manifest()
    d = resolve_domains(df, PretrainConfig())
    rows = select_rows(df, d, ["angry", "sad"])
    tgt = rows.target_train
    assert set(tgt["corpus"]) == {"emodb", "mycsv"} and set(tgt["split"]) == {"train"}
    test_spk = set(df.loc[(df["role"] == "target") & (df["split"] == "test"), "speaker"])
    for part in (rows.target_train, rows.held_out, rows.source_train, rows.source_val):
        assert not set(part["speaker"]) & test_spk
    assert set(rows.held_out["split"]) == {"val"} and set(rows.held_out["corpus"]) == set(d.names)
    assert set(rows.source_train["corpus"]) == {"crema", "ravdess"}


def test_a_target_test_speaker_in_the_adaptation_data_is_refused():
    df = _manifest()
    d = resolve_domains(df, PretrainConfig())
    leaked = df[(df["corpus"] == "emodb") & (df["split"].isin(["train", "test"]))]
    with pytest.raises(TargetLeakageError, match="emodb/3"):
        assert_no_target_test(leaked, df, d, "adaptation set")
    # The same speaker relabelled as "train" in the rows but "test" in the manifest is still caught.
    sneaky = df[df["speaker"] == "emodb/3"].assign(split="train")
    with pytest.raises(TargetLeakageError, match="emodb/3"):
        assert_no_target_test(sneaky, df, d, "adaptation set")
    # Source test speakers are not the guard's business (the recognizer keeps them out of training).
    assert_no_target_test(df[df["corpus"] == "ravdess"], df, d, "adaptation set")


def test_a_target_without_training_speakers_is_an_error():
    df = _manifest()
    df.loc[(df["corpus"] == "mycsv") & (df["split"] == "train"), "split"] = "test"
    with pytest.raises(PretrainDataError, match=r"\['mycsv'\] have no training-split speakers"):
        select_rows(df, resolve_domains(df, PretrainConfig()), ["angry", "sad"])


# ----------------------------------------------------------------------------- probe and training
def test_proxy_a_distance_and_the_probe():
    assert proxy_a_distance(0.0) == 2.0 and proxy_a_distance(0.5) == 0.0
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(12), 20).astype(str)
    is_t = np.repeat(np.arange(12) >= 6, 20)
    apart = rng.normal(size=(240, 5)) + 4.0 * is_t[:, None]
    same = rng.normal(size=(240, 5))
    cfg = PretrainConfig(probe_folds=3)
    far = domain_probe(apart, is_t, speakers, cfg, "t")
    near = domain_probe(same, is_t, speakers, cfg, "t")
    assert far is not None and near is not None and far.grouped and far.folds == 3
    assert far.accuracy > 0.95 and far.a_distance > 1.8
    assert near.accuracy < 0.7 and near.a_distance < 0.8
    assert domain_probe(same, np.zeros(240, bool), speakers, cfg, "t") is None


def _toy_data(n: int = 200, shift: float = 3.0, seed: int = 0) -> LoopData:
    """Two classes separable on dims 0-1 in both domains; the target is shifted on dims 2-5."""
    rng = np.random.default_rng(seed)

    def make(k: int, target: bool) -> tuple[list[np.ndarray], np.ndarray]:
        y = rng.integers(0, 2, k)
        x = rng.normal(size=(k, 6)).astype(np.float32)
        x[:, :2] += 2.0 * y[:, None]
        if target:
            x[:, 2:] += shift
        return list(x), y

    sx, sy = make(n, False)
    tx, _ = make(n, True)
    vx, vy = make(n // 4, False)
    return LoopData(src_x=sx, src_y=sy, src_domain=np.zeros(n, np.int64), src_speaker=np.zeros(n, np.int64),
                    tgt_x=tx, tgt_domain=np.ones(n, np.int64), tgt_speaker=np.ones(n, np.int64),
                    val_x=vx, val_y=vy)


def test_adversarial_training_hides_the_domain_that_source_only_training_keeps():
    """Toy shift on emotion-free dimensions: a fresh probe on the embeddings finds the domain
    after source-only training and much less after DANN. (Over six seeds the probe's accuracy
    falls from 0.91 to 0.76 on average; one seed is pinned so the test is deterministic.)"""
    data = _toy_data()
    cfg = PretrainConfig(epochs=30, batch_size=32, lambda_max=1.0, lr=3e-3, domain_hidden=[64],
                         adversary_lr_scale=10.0, probe_folds=3)
    dev = torch.device("cpu")
    seed = 1
    z = {}
    for adversarial in (False, True):
        torch.manual_seed(seed)
        m = Dann(EgemapsMlp(6, 2, MlpConfig(hidden=[16, 8], dropout=0.0, input_dropout=0.0)), n_domains=2,
                 hidden=cfg.domain_hidden)
        hist = train_dann(m, data, cfg, base_params().train, dev, adversarial=adversarial, seed=seed)
        assert hist[-1]["source_val_uar"] > 0.8  # emotion is still learnt
        assert ("loss_domain" in hist[-1]) is adversarial
        z[adversarial] = embed(m.encoder, data.src_x[100:] + data.tgt_x[100:], dev, 64)
    is_t = np.repeat([False, True], 100)
    speakers = np.arange(200).astype(str)  # every clip its own "speaker"
    before = domain_probe(z[False], is_t, speakers, cfg, "t")
    after = domain_probe(z[True], is_t, speakers, cfg, "t")
    assert before is not None and after is not None
    assert before.accuracy > 0.9  # the shift survives source-only training
    assert after.accuracy < before.accuracy - 0.15 and after.a_distance < before.a_distance - 0.6
