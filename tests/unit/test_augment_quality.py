"""The quality filter's criteria on constructed cases, and the report's distribution metrics."""

from __future__ import annotations

import numpy as np
import pytest

from affectflow.config import AugmentConfig
from affectflow.stages.augment.quality import (
    AgreementModel,
    Scores,
    Thresholds,
    criteria_passed,
    inside_balls,
    knn_radii,
    manifold_scores,
    real_nn_distances,
    select,
    thresholds_from_real,
)
from affectflow.stages.augment.report import frechet_distance, precision_recall


def grid_class(offset: float) -> np.ndarray:
    """A 5x5 unit grid in 2-D, shifted: k=1 radius of every point is exactly 1."""
    g = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2)
    return g + offset


def test_knn_radii_and_balls_on_a_grid() -> None:
    R = grid_class(0.0)
    assert np.allclose(knn_radii(R, 1), 1.0)
    assert np.allclose(real_nn_distances(R), 1.0)
    S = np.array([[2.5, 2.0], [2.0, 2.9], [6.5, 6.5], [-1.2, 0.0]])
    assert inside_balls(S, R, knn_radii(R, 1)).tolist() == [True, True, False, False]
    # k is clipped for tiny classes; a lone sample has no spread (radius 0).
    assert np.allclose(knn_radii(R[:3], 10), knn_radii(R[:3], 2))
    assert knn_radii(R[:1], 5).tolist() == [0.0]


@pytest.fixture
def world():
    """Two grid classes far apart and four synthetic samples of class 0 with known fates."""
    real = np.concatenate([grid_class(0.0), grid_class(100.0)])
    real_y = np.repeat([0, 1], 25)
    syn = np.array([
        [2.5, 2.5],      # good: inside class 0's manifold, 0.71 from its nearest real sample
        [2.0, 2.0001],   # near-copy of a real sample
        [12.0, 12.0],    # off-manifold (between the classes, outside every class-0 ball)
        [102.5, 102.5],  # inside the manifold of the *other* class
    ])
    syn_y = np.zeros(4, np.int64)
    return real, real_y, syn, syn_y


def test_manifold_and_novelty_criteria(world) -> None:
    real, real_y, syn, syn_y = world
    nn, inside = manifold_scores(syn, syn_y, real, real_y, k=1)
    assert inside.tolist() == [True, True, False, False]
    assert nn[0] == pytest.approx(np.sqrt(0.5)) and nn[1] == pytest.approx(1e-4, abs=1e-6)
    th = Thresholds({0: -np.inf, 1: -np.inf}, label_tau=0.5, delta=0.1)
    scores = Scores(realness=np.zeros(4), agreement=np.ones(4), nn_distance=nn, knn_inside=inside)
    kept, passed = select(scores, syn_y, th, ["manifold", "novelty"], keep_fraction=1.0)
    assert kept.tolist() == [True, False, False, False]
    assert passed["novelty"].tolist() == [True, False, True, True]
    assert passed["manifold"].tolist() == [True, True, False, False]
    # Unfiltered keeps everything; each criterion alone rejects only its own failures.
    assert select(scores, syn_y, th, [], 1.0)[0].all()
    assert select(scores, syn_y, th, ["novelty"], 1.0)[0].tolist() == [True, False, True, True]


def test_realness_and_agreement_criteria() -> None:
    y = np.array([0, 0, 1, 1])
    th = Thresholds({0: 0.0, 1: 5.0}, label_tau=0.6, delta=0.0)  # per-class realness thresholds
    scores = Scores(realness=np.array([0.1, -0.1, 5.0, 6.0]), agreement=np.array([0.9, 0.9, 0.59, 0.6]),
                    nn_distance=np.ones(4), knn_inside=np.ones(4, bool))
    kept, passed = select(scores, y, th, ["realness", "agreement", "manifold", "novelty"], 1.0)
    assert passed["realness"].tolist() == [True, False, True, True]
    assert passed["agreement"].tolist() == [True, True, False, True]
    assert kept.tolist() == [True, False, False, True]


def test_keep_fraction_keeps_the_most_real_per_class() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    scores = Scores(realness=np.array([1.0, 4.0, 3.0, 2.0, 0.0, 9.0]), agreement=np.ones(6),
                    nn_distance=np.ones(6), knn_inside=np.ones(6, bool))
    th = Thresholds({0: -np.inf, 1: -np.inf}, 0.5, 0.0)
    kept, _ = select(scores, y, th, [], keep_fraction=0.5)
    assert kept.tolist() == [False, True, True, False, False, True]
    with pytest.raises(ValueError, match=r"augment\.filters"):
        select(scores, y, th, ["sharpness"], 1.0)


def test_thresholds_from_real_data() -> None:
    """Realness threshold = class median + pooled quantile of deviations from the class medians."""
    cfg = AugmentConfig(realness_quantile=0.25, min_distance_quantile=0.0, label_tau=0.7)
    cal_realness = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    cal_y = np.array([0, 0, 0, 1, 1, 1])
    th = thresholds_from_real(cal_realness, cal_y, grid_class(0.0)[:6], cfg)
    # deviations [-1, 0, 1, -10, 0, 10] -> 25 % quantile -0.75; medians 2 and 20
    assert th.realness_min == {0: pytest.approx(1.25), 1: pytest.approx(19.25)}
    assert th.realness_pooled == pytest.approx(2.25)  # 25 % quantile of the raw scores
    assert th.delta == pytest.approx(1.0) and th.label_tau == 0.7
    assert th.to_json(["a", "b", "c"])["realness_min"] == {"a": pytest.approx(1.25), "b": pytest.approx(19.25)}
    # A class without calibration reals falls back to the pooled threshold.
    scores = Scores(realness=np.array([2.0, 2.5]), agreement=np.ones(2), nn_distance=np.ones(2),
                    knn_inside=np.ones(2, bool))
    assert criteria_passed(scores, np.array([2, 2]), th)["realness"].tolist() == [False, True]


def test_agreement_model_probability_of_the_conditioned_label() -> None:
    rng = np.random.default_rng(0)
    F = np.concatenate([rng.normal(-3, 0.5, (40, 2)), rng.normal(3, 0.5, (40, 2))])
    y = np.repeat([0, 2], 40)  # class 1 never seen in training
    m = AgreementModel([], alpha=1.0, max_iter=200, seed=0).fit(F, y)
    p = m.prob_of(np.array([[-3.0, -3.0], [-3.0, -3.0], [3.0, 3.0], [3.0, 3.0]]), np.array([0, 2, 2, 1]))
    assert p[0] > 0.95 and p[1] < 0.05 and p[2] > 0.95 and p[3] == 0.0
    mlp = AgreementModel([8], alpha=1e-3, max_iter=300, seed=0).fit(F, y)
    assert mlp.prob_of(np.array([[3.0, 3.0]]), np.array([2]))[0] > 0.9


def test_frechet_distance_known_values() -> None:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4000, 3))
    assert frechet_distance(A, A) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by (2, 0, 0): FD = ‖Δμ‖² = 4.
    assert frechet_distance(A, A + np.array([2.0, 0, 0])) == pytest.approx(4.0, rel=1e-6)
    # Isotropic scale 1 vs 2 in 3-D: Tr(I + 4I − 2·2I) = 3.
    assert frechet_distance(A, 2 * A) == pytest.approx(3.0, rel=0.05)
    assert np.isnan(frechet_distance(A[:1], A))


def test_precision_recall_separate_fidelity_and_coverage() -> None:
    real = grid_class(0.0)
    half = real[real[:, 0] <= 1.0]  # synthetic = real samples of the left part only
    p, r = precision_recall(real, half, k=1)
    assert p == 1.0  # every synthetic sample is on the real manifold
    assert r < 0.7  # but much of the real manifold is not covered
    p_off, _ = precision_recall(real, real + 50.0, k=1)
    assert p_off == 0.0
