"""Style-conditioned augmentation (issue 13, eGeMAPS space): style codes per speaker, new codes mixed
between speakers, the style_novelty criterion, the stored codes and scores, and the report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_augment import (  # same folder (pytest puts it on sys.path)
    CLASSES,
    make_feature_folder,
    small_params,
)

from affectflow.config import AugmentConfig, ConfigError, load_params
from affectflow.contracts.manifest import write_manifest
from affectflow.contracts.synthetic import SyntheticSet, read_synthetic, write_synthetic
from affectflow.models.wgan import MlpGenerator, Wgan, build_critic, build_generator, train_wgan
from affectflow.stages.augment.quality import (
    Scores,
    Thresholds,
    criteria_passed,
    select,
    style_novelty_threshold,
)
from affectflow.stages.augment.stage import augment
from affectflow.stages.augment.style import StyleError, StyleSpace


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread (tests/conftest.py)."""


def speaker_world(
    n_speakers: int = 6, per_speaker: int = 30, d: int = 10, n_classes: int = 2, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, speakers, corpora, speaker offsets): each speaker shifts every clip by its own offset,
    each class by its own mean; speakers alternate between two corpora."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, 3.0, (n_speakers, d))
    class_means = rng.normal(0, 2.0, (n_classes, d))
    spk_idx = np.repeat(np.arange(n_speakers), per_speaker)
    y = np.tile(np.arange(n_classes), n_speakers * per_speaker // n_classes)
    X = offsets[spk_idx] + class_means[y] + rng.normal(0, 0.5, (len(y), d))
    speakers = np.array([f"c{s % 2}/{s:02d}" for s in spk_idx])
    corpora = np.array([f"c{s % 2}" for s in spk_idx])
    return X.astype(np.float32), y, speakers, corpora, offsets


def _cfg(**kw: object) -> AugmentConfig:
    base = {"latent_dim": 8, "hidden": [32, 32], "batch_size": 32, "seed": 0, "device": "cpu"}
    return AugmentConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- conditioning
def test_style_code_changes_the_sample_for_the_same_noise_and_label() -> None:
    torch.manual_seed(0)
    g = build_generator((10,), 3, _cfg(), style_dim=4).eval()
    assert isinstance(g, MlpGenerator)
    z, y = torch.randn(1, 8).repeat(2, 1), torch.tensor([1, 1])
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 2.0]])
    x = g(z, y, s)
    assert x.shape == (2, 10) and not torch.allclose(x[0], x[1])
    with pytest.raises(ValueError, match="style-conditioned"):
        g(z, y)
    # Through Wgan.sample: the same seed gives the same z and labels; only the codes differ.
    critic = build_critic((10,), 3, _cfg(), style_dim=4)
    assert critic(x, y, s).shape == (2,)
    gan = Wgan(g, critic, torch.device("cpu"), 8, history=None, style_dim=4)  # type: ignore[arg-type]
    labels = np.array([0, 1, 2, 0])
    a, b = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    assert np.array_equal(gan.sample(labels, seed=5, styles=a), gan.sample(labels, seed=5, styles=a))
    assert not np.allclose(gan.sample(labels, seed=5, styles=a), gan.sample(labels, seed=5, styles=b))
    assert gan.realness(gan.sample(labels, 5, styles=a), labels, styles=a).shape == (4,)
    with pytest.raises(ValueError, match=r"styles must have shape \(4, 4\)"):
        gan.sample(labels, seed=5)
    # Log-mel segments cannot be style-conditioned.
    with pytest.raises(ValueError, match=r"augment\.style"):
        build_generator((12, 24), 3, _cfg(), style_dim=4)


def test_trained_generator_keeps_the_class_under_two_style_codes() -> None:
    """Well-separated classes, speakers that shift the features: samples conditioned on a class in
    the voice of either of two speakers' codes are recognised as that class by a model of real data,
    and sound like the speaker whose code they got (nearer that speaker's mean than the other's)."""
    X, y, speakers, corpora, _ = speaker_world(n_speakers=4, per_speaker=60, d=8, seed=1)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)  # the stage trains on standardised features
    space = StyleSpace.fit(X, speakers, corpora, dim=3, y=y)
    cfg = _cfg(epochs=100, n_critic=2, lr=1e-3, batch_size=64)
    gan = train_wgan(X, y, 2, cfg, torch.device("cpu"), styles=space.codes_for(speakers))
    assert gan.style_dim == 3
    clf = LogisticRegression(max_iter=500).fit(X, y)
    labels = np.repeat([0, 1], 100)
    pair = [0, 3]
    spk_means = np.stack([X[speakers == space.speakers[i]].mean(0) for i in pair])
    for j, i in enumerate(pair):
        S = gan.sample(labels, seed=2, styles=np.repeat(space.codes[i][None], len(labels), axis=0))
        assert (clf.predict(S) == labels).mean() > 0.75
        assert np.linalg.norm(S.mean(0) - spk_means, axis=1).argmin() == j
    mixed = space.mix(len(labels), np.random.default_rng(0))
    assert (clf.predict(gan.sample(labels, seed=2, styles=mixed)) == labels).mean() > 0.75


# ----------------------------------------------------------------------------- the style space
def test_codes_are_per_speaker_normalised_and_padded() -> None:
    X, y, speakers, corpora, _ = speaker_world(n_speakers=4)
    space = StyleSpace.fit(X, speakers, corpora, dim=8, y=y)
    assert space.codes.shape == (4, 8) and space.dim == 8
    assert np.allclose(space.codes[:, 3:], 0)  # 4 speakers span at most 3 components
    assert np.allclose(space.codes.mean(0), 0, atol=1e-5)
    assert np.mean((space.codes[:, :3] ** 2).sum(1)) == pytest.approx(3.0, rel=1e-4)  # typical component ~1
    assert space.speakers == ["c0/00", "c0/02", "c1/01", "c1/03"] and space.corpora == ["c0", "c0", "c1", "c1"]
    clip_codes = space.codes_for(speakers)
    assert clip_codes.shape == (len(X), 8)
    assert np.array_equal(clip_codes[0], clip_codes[1])  # a clip's code is its speaker's
    with pytest.raises(StyleError, match="'nobody'"):
        space.codes_for(["nobody"])
    with pytest.raises(StyleError, match="at least 2 training speakers"):
        StyleSpace.fit(X[:5], speakers[:5], corpora[:5], dim=4)


def test_mix_interpolates_speakers_of_two_corpora() -> None:
    X, y, speakers, corpora, _ = speaker_world(n_speakers=4)
    space = StyleSpace.fit(X, speakers, corpora, dim=3, y=y, mix_range=(0.2, 0.8))
    codes = space.mix(300, np.random.default_rng(0))
    assert codes.shape == (300, 3)
    C = space.codes.astype(np.float64)
    for m in codes:
        # Some cross-corpus pair (a, b) has m = (1 - w)·a + w·b with w in [0.2, 0.8].
        fits = []
        for a, b in itertools.permutations(range(4), 2):
            if space.corpora[a] == space.corpora[b]:
                continue
            d = C[b] - C[a]
            w = float((m - C[a]) @ d / (d @ d))
            fits.append((np.linalg.norm(m - (C[a] + w * d)), w))
        resid, w = min(fits)
        assert resid < 1e-5 and 0.2 - 1e-6 <= w <= 0.8 + 1e-6
    # Mixed codes are new: none coincides with a training speaker.
    assert space.code_novelty(codes).min() > 0
    # Noise extrapolates off the segments.
    noisy = StyleSpace.fit(X, speakers, corpora, dim=3, y=y, noise=1.0).mix(50, np.random.default_rng(0))
    assert not np.allclose(noisy, space.mix(50, np.random.default_rng(0)))
    # One corpus: pairs of different speakers of it.
    one = StyleSpace.fit(X, speakers, np.full(len(X), "solo"), dim=3, y=y)
    assert one.code_novelty(one.mix(50, np.random.default_rng(1))).min() > 0


def test_style_novelty_on_constructed_cases() -> None:
    X, y, speakers, corpora, offsets = speaker_world(n_speakers=6, per_speaker=40)
    space = StyleSpace.fit(X, speakers, corpora, dim=4, y=y)
    # Code level: a training speaker's code is not novel; a far code is.
    assert np.allclose(space.code_novelty(space.codes), 0)
    assert space.code_novelty(space.codes[:1] + 10.0)[0] > 5
    # Feature level: real clips of a training speaker read as that speaker; a clip in a voice far
    # outside every training speaker (twice the largest offset) reads as novel.
    bar = style_novelty_threshold(space.real_novelty(X, speakers), 0.5)
    assert bar > 0
    own = space.novelty(X[speakers == speakers[0]])
    far = space.novelty((X[:20] - offsets[0] + 2.5 * offsets.max(0)).astype(np.float32))
    assert np.median(own) < bar < np.median(far)
    # A clip's out-of-fold reading is far from the *other* speakers: the reference is not ~0.
    assert np.median(space.real_novelty(X, speakers)) > np.median(own)
    # The filter: pass = novelty above the bar; per-criterion pass masks include it.
    scores = Scores(realness=np.zeros(3), agreement=np.ones(3), nn_distance=np.ones(3),
                    knn_inside=np.ones(3, bool), style_novelty=np.array([0.0, bar, bar + 1]))
    th = Thresholds({0: -np.inf}, label_tau=0.5, delta=0.0, style_novelty_min=bar)
    assert criteria_passed(scores, np.zeros(3, int), th)["style_novelty"].tolist() == [False, False, True]
    kept, passed = select(scores, np.zeros(3, int), th, ["manifold", "style_novelty"], 1.0)
    assert kept.tolist() == [False, False, True] and set(passed) == {"realness", "agreement", "manifold",
                                                                     "novelty", "style_novelty"}
    assert th.to_json(["a"])["style_novelty_min"] == bar
    # Without style scores the criterion is absent and asking for it is an error.
    plain = Scores(np.zeros(3), np.ones(3), np.ones(3), np.ones(3, bool))
    assert "style_novelty" not in criteria_passed(plain, np.zeros(3, int), Thresholds({0: -np.inf}, 0.5, 0.0))
    with pytest.raises(ValueError, match=r"augment\.style: speaker"):
        select(plain, np.zeros(3, int), Thresholds({0: -np.inf}, 0.5, 0.0), ["style_novelty"], 1.0)


# ----------------------------------------------------------------------------- config & contract
def test_style_config_defaults_and_errors() -> None:
    cfg = AugmentConfig()
    assert cfg.style == "none" and cfg.style_dim == 8 and cfg.style_mix == [0.2, 0.8]
    assert cfg.style_noise == 0.0 and cfg.style_novelty_quantile == 0.5 and "style_novelty" not in cfg.filters
    yaml_cfg = load_params(Path(__file__).parents[2] / "params.yaml").augment
    assert yaml_cfg.style == "none" and yaml_cfg.filters == cfg.filters
    with pytest.raises(ConfigError, match=r"augment\.style: speaker needs vector features"):
        load_params(None, {"augment.style": "speaker", "augment.feature": "logmel"})
    with pytest.raises(ConfigError, match=r"augment\.style: speaker is implemented for generator wgan_gp only"):
        load_params(None, {"augment.style": "speaker", "augment.generator": "aaec"})
    with pytest.raises(ConfigError, match=r"style_novelty needs augment\.style: speaker"):
        load_params(None, {"augment.filters": ["realness", "style_novelty"]})
    with pytest.raises(ConfigError, match="style_mix"):
        load_params(None, {"augment.style_mix": [0.8, 0.2]})
    ok = load_params(None, {"augment.style": "speaker", "augment.filters": ["style_novelty"]}).augment
    assert ok.filters == ["style_novelty"]


def test_synthetic_set_stores_codes_and_reads_old_sets(tmp_path: Path) -> None:
    X = np.zeros((3, 4), np.float32)
    base = SyntheticSet(X=X, y=np.array([0, 1, 0]), classes=["a", "b"], feature="egemaps",
                        kept=np.array([True, False, True]), scores={"realness": np.arange(3.0)})
    write_synthetic(tmp_path / "old.npz", base)
    old = read_synthetic(tmp_path / "old.npz", kept_only=False)
    assert old.style is None and set(old.scores) == {"realness"}
    styled = SyntheticSet(**{**base.__dict__, "style": np.arange(6.0).reshape(3, 2),
                             "scores": {"realness": np.arange(3.0), "style_novelty": np.array([0.1, 0.2, 0.3])}})
    write_synthetic(tmp_path / "new.npz", styled)
    new = read_synthetic(tmp_path / "new.npz")  # kept rows only
    assert new.style is not None and new.style.shape == (2, 2) and new.style[1].tolist() == [4.0, 5.0]
    assert set(new.scores) == {"realness", "style_novelty"}


# ----------------------------------------------------------------------------- end to end
def test_augment_with_speaker_style_end_to_end(tmp_path: Path) -> None:
    df = make_feature_folder(tmp_path / "features")
    df.loc[df["speaker"] == "fake/05", "corpus"] = "other"  # training speakers of two corpora
    write_manifest(df, tmp_path / "manifest.parquet")
    params = small_params(tmp_path, **{
        "augment.style": "speaker", "augment.style_dim": 4, "augment.style_noise": 0.5,
        "augment.filters": ["realness", "agreement", "style_novelty"], "augment.epochs": 3})
    res = augment(params, tmp_path / "manifest.parquet", tmp_path / "features", tmp_path / "augment", track=False)
    syn = read_synthetic(res.out_dir, kept_only=False)
    n = len(CLASSES) * 12
    assert syn.style is not None and syn.style.shape == (n, 4)
    assert syn.scores["style_novelty"].shape == (n,) and (syn.scores["style_novelty"] >= 0).all()
    report = json.loads(res.report_json.read_text())
    th = report["thresholds"]
    assert report["filters"] == ["realness", "agreement", "style_novelty"]
    # kept = the three criteria, recomputed from the stored scores.
    rmin = np.array([th["realness_min"][CLASSES[c]] for c in syn.y])
    expected = ((syn.scores["realness"] >= rmin) & (syn.scores["agreement"] >= th["label_tau"])
                & (syn.scores["style_novelty"] > th["style_novelty_min"]))
    assert np.array_equal(syn.kept, expected)
    st = report["style"]
    assert st["n_speakers"] == 3 and st["n_corpora"] == 2 and st["dim"] == 4
    assert st["threshold"] == th["style_novelty_min"]
    for c in CLASSES:
        row = report["per_class"][c]
        assert "style_novelty" in row["passed"] and row["rejected"] == row["generated"] - row["kept"]
        assert st["per_class"][c]["real"] > 0
        assert st["per_class"][c]["n_kept"] == row["kept"]
    assert st["per_class"]["all"]["n_kept"] + st["per_class"]["all"]["n_rejected"] == n
    md = res.report_md.read_text()
    assert "## Style: what was added" in md and "style novelty minimum" in md
