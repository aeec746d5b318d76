"""Recording-condition copies (`features.robustness`, `train.robustness_copies`): each part of a
condition does what it says, a corpus keeps one condition per copy, the features stage caches
copies by content and configuration, and training standardises every (corpus, copy) by itself
without lengthening its epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from base_settings import base_params
from scipy import signal

from affectflow.config import RobustnessConfig, TrainConfig, load_params
from affectflow.contracts.feature_store import FeatureSet
from affectflow.corpora.demo import make_ravdess_like
from affectflow.features.robustness import (
    Condition,
    apply,
    copy_kind,
    draw_condition,
    recording_copy,
    split_kind,
)
from affectflow.stages.train.loop import epoch_order

SR = 16000
CLASSES = ["angry", "happy", "neutral", "sad"]


def _speechlike(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Broadband, amplitude-modulated noise: energy in every band, with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    return (0.2 * rng.standard_normal(t.size) * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _none(**on: object) -> Condition:
    base = {"band": "none", "lowpass_hz": 4000.0, "highpass_hz": 200.0, "reverb": False, "rt60_s": 0.5,
            "drr_db": 5.0, "noise": False, "color": "white", "snr_db": 20.0, "gain_db": 0.0}
    return Condition(**{**base, **on})


def _band_energy(x: np.ndarray, low: float, high: float) -> float:
    f, p = signal.welch(x, SR, nperseg=1024)
    return float(p[(f >= low) & (f < high)].sum())


def test_each_part_of_a_condition_does_what_it_says():
    x, rng = _speechlike(), np.random.default_rng(0)
    assert np.array_equal(apply(x, SR, _none(), rng), x)  # nothing switched on: the clip itself
    tel = apply(x, SR, _none(band="telephone"), rng)
    assert _band_energy(tel, 5000, 8000) < 0.01 * _band_energy(x, 5000, 8000)
    assert _band_energy(tel, 1000, 3000) > 0.5 * _band_energy(x, 1000, 3000)
    hp = apply(x, SR, _none(band="highpass", highpass_hz=400.0), rng)
    assert _band_energy(hp, 0, 100) < 0.05 * _band_energy(x, 0, 100)
    noisy = apply(x, SR, _none(noise=True, snr_db=10.0), rng)
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x).astype(np.float64) ** 2))
    assert 6.5 < snr < 13.5  # the condition's SNR, +- 3 dB per clip
    quieter = apply(x, SR, _none(gain_db=-6.0), rng)
    assert np.allclose(quieter, x * 10 ** -0.3, atol=1e-6)
    assert np.abs(apply(x, SR, _none(gain_db=40.0), rng)).max() <= 0.99 + 1e-6  # peak-limited
    wet = apply(x, SR, _none(reverb=True, rt60_s=0.8, drr_db=0.0), rng)
    assert wet.shape == x.shape and 0.3 < np.corrcoef(wet, x)[0, 1] < 0.99  # direct path kept, tail added


def test_one_condition_per_corpus_and_copy_and_the_switches():
    cfg = RobustnessConfig(copies=2)
    a1, a2, b1 = draw_condition(cfg, "alpha", 1), draw_condition(cfg, "alpha", 2), draw_condition(cfg, "beta", 1)
    assert a1 == draw_condition(cfg, "alpha", 1) and len({a1, a2, b1}) == 3
    off = RobustnessConfig(copies=2, band=False, reverb=False, noise=False, gain=False)
    assert all(not c.reverb and not c.noise and c.band == "none" and c.gain_db == 0
               for c in (draw_condition(off, n, k) for n in ("alpha", "beta", "gamma") for k in (1, 2, 3)))
    x = _speechlike()
    assert np.array_equal(recording_copy(x, SR, off, "alpha", 1, "a" * 64), x)
    # the same clip, copy and corpus: the same audio; another clip of that corpus: its own noise draw
    one = recording_copy(x, SR, cfg, "beta", 1, "a" * 64)
    assert np.array_equal(one, recording_copy(x, SR, cfg, "beta", 1, "a" * 64))
    assert b1.noise and not np.array_equal(one, recording_copy(x, SR, cfg, "beta", 1, "b" * 64))
    assert split_kind(copy_kind("compare", 3)) == ("compare", 3) and split_kind("egemaps") == ("egemaps", 0)
    with pytest.raises(ValueError, match=r"snr_db: \[30.0, 5.0\] is not a range"):
        load_params(None, {"features.robustness.snr_db": [30, 5]})


def test_copies_add_rows_to_the_pool_not_steps_to_the_epoch():
    y = np.tile(np.arange(2), 30)
    group = np.repeat([0, 1], 30)
    copy = np.zeros(60, bool)
    y3, g3, c3 = np.concatenate([y, y, y]), np.concatenate([group] * 3), np.concatenate([copy, ~copy, ~copy])
    for tc in (TrainConfig(seed=1), TrainConfig(seed=1, class_balance="sampler", corpus_balance=True)):
        order = epoch_order(tc, y3, 0, 2, None, g3, c3)
        assert len(order) == 60  # as many draws as clean rows
        assert 0.5 < c3[order].mean() < 0.8  # two copies per clip: about two thirds of the draws
    # no copies: the order of before, draw for draw
    tc = TrainConfig(seed=1)
    assert np.array_equal(epoch_order(tc, y, 0, 2, None, group, copy), epoch_order(tc, y, 0, 2, None, group))


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("robust")
    make_ravdess_like(base / "alpha", actors=4, emotions=tuple(CLASSES), clips_per_emotion=2, duration=0.8)
    make_ravdess_like(base / "beta", actors=4, emotions=tuple(CLASSES), clips_per_emotion=2, duration=0.8)
    return base


def _params(data: Path, work: Path, **over: object):
    return base_params({
        "paths.workdir": str(work), "paths.data_root": str(data),
        "ingest.corpora": [{"name": "alpha", "adapter": "ravdess", "root": "alpha"},
                           {"name": "beta", "adapter": "ravdess", "root": "beta"}],
        "ingest.classes": CLASSES, "ingest.workers": 1, "features.workers": 1, "features.kinds": ["egemaps"],
        "features.robustness.copies": 1, "splits.val_fraction": 0.0,
        "train.model": "egemaps_mlp", "train.epochs": 2, "train.batch_size": 16, "train.mlp.hidden": [16],
        "train.normalize": "corpus", "train.checkpoint": "last", "train.corpus_balance": True,
        "train.class_balance": "sampler", "train.robustness_copies": 1, "train.threads": 1,
        "tracking.uri": f"sqlite:///{work / 'mlflow.db'}", "tracking.log_model": False, **over})


def test_features_cache_the_copies_and_training_standardises_each_condition(two_corpora: Path, tmp_path: Path):
    from affectflow.features.keys import feature_keys
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.plan import TrainingError, plan
    from affectflow.stages.train.stage import train

    params = _params(two_corpora, tmp_path / "work")
    manifest = ingest(params, tmp_path / "ingest").manifest
    res = extract_features(params, manifest, tmp_path / "features")
    assert res.summary["kinds"]["egemaps@r1"]["computed"] == res.summary["unique_audio"]
    fs = FeatureSet(tmp_path / "features")
    ids = fs.index.loc[fs.index["kind"] == "egemaps", "utt_id"].tolist()
    clean, copy = np.stack(fs.load("egemaps", ids)), np.stack(fs.load("egemaps@r1", ids))
    assert clean.shape == copy.shape == (len(ids), 88) and not np.allclose(clean, copy)
    # warm: nothing recomputed; one more copy computes only that copy; other settings, other keys
    assert extract_features(params, manifest, tmp_path / "features").summary["kinds"]["egemaps@r1"]["computed"] == 0
    two = _params(two_corpora, tmp_path / "work", **{"features.robustness.copies": 2})
    kinds = extract_features(two, manifest, tmp_path / "features").summary["kinds"]
    assert kinds["egemaps"]["computed"] == kinds["egemaps@r1"]["computed"] == 0
    assert kinds["egemaps@r2"]["computed"] == res.summary["unique_audio"]
    quiet = _params(two_corpora, tmp_path / "work", **{"features.robustness.noise": False})
    assert feature_keys(quiet)["egemaps@r1"] != feature_keys(params)["egemaps@r1"]
    assert feature_keys(quiet)["egemaps"] == feature_keys(params)["egemaps"]

    p = plan(params, manifest, tmp_path / "features", tmp_path / "train")
    assert p.worker.robustness_copies == 1
    assert {"alpha", "beta", "alpha@r1", "beta@r1"} <= set(p.worker.stats_per_corpus)
    assert p.run_name != plan(_params(two_corpora, tmp_path / "work", **{"train.robustness_copies": 0}),
                              manifest, tmp_path / "features", tmp_path / "train").run_name
    result = train(params, manifest, tmp_path / "features", tmp_path / "train")
    assert result.summary["epochs_run"] == 2 and (result.model_dir / "model.json").is_file()
    assert "alpha@r1" not in (result.model_dir / "model.json").read_text()  # copies are training-only

    with pytest.raises(TrainingError, match=r"train.robustness_copies is 3 but features.robustness.copies is 1"):
        plan(_params(two_corpora, tmp_path / "work", **{"train.robustness_copies": 3}),
             manifest, tmp_path / "features", tmp_path / "train")
