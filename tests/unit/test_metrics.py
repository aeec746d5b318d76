"""Metrics against hand-computed cases (and sklearn as a second opinion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from affectflow import metrics as M

# 3 classes, 10 utterances. Reference counts: class 0 x5, class 1 x3, class 2 x2.
Y_TRUE = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 1, 2, 1, 1, 0, 2, 2]
# recalls: 3/5, 2/3, 2/2 -> UAR = (0.6 + 0.6667 + 1) / 3 = 0.75556; WA = 7/10
# class 0: TP 3, FP 1, FN 2 -> F1 = 6/9; class 1: TP 2, FP 1, FN 1 -> 4/6; class 2: TP 2, FP 1, FN 0 -> 4/5


def test_confusion_counts_rows_are_reference():
    cm = M.confusion(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[3, 1, 1], [1, 2, 0], [0, 0, 2]]


def test_hand_computed_uar_wa_f1():
    assert M.uar(Y_TRUE, Y_PRED, 3) == pytest.approx((0.6 + 2 / 3 + 1.0) / 3)
    assert M.wa(Y_TRUE, Y_PRED, 3) == pytest.approx(0.7)
    assert M.macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((6 / 9 + 4 / 6 + 4 / 5) / 3)


def test_uar_differs_from_wa_on_imbalanced_data():
    # Always predicting the majority class: WA is high, UAR is chance.
    y = [0] * 8 + [1] * 2
    assert M.wa(y, [0] * 10, 2) == pytest.approx(0.8)
    assert M.uar(y, [0] * 10, 2) == pytest.approx(0.5)


def test_absent_reference_class_is_left_out_of_the_average():
    # Class 2 never occurs in the reference, but is predicted once: UAR averages classes 0 and 1 only.
    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]
    assert M.uar(y_true, y_pred, 3) == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(M.recalls(M.confusion(y_true, y_pred, 3))[2])
    assert M.macro_f1(y_true, y_pred, 3) == pytest.approx((2 / 3 + 1.0) / 2)


def test_agrees_with_sklearn_on_random_labels():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 6, 300)
    p = np.where(rng.random(300) < 0.4, t, rng.integers(0, 6, 300))
    assert M.uar(t, p, 6) == pytest.approx(recall_score(t, p, average="macro"))
    assert M.wa(t, p, 6) == pytest.approx(accuracy_score(t, p))
    assert M.macro_f1(t, p, 6) == pytest.approx(f1_score(t, p, average="macro"))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        M.confusion([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        M.confusion([0, 2], [0, 1], 2)


def test_bootstrap_interval_brackets_the_value_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        t = rng.integers(0, 4, n)
        return t, np.where(rng.random(n) < 0.6, t, rng.integers(0, 4, n))

    small = M.bootstrap(*sample(80), n_classes=4, n_resamples=300, seed=0)
    large = M.bootstrap(*sample(2000), n_classes=4, n_resamples=300, seed=0)
    for name in ("uar", "wa", "macro_f1"):
        e = small[name]
        assert e.low <= e.value <= e.high
        assert (large[name].high - large[name].low) < (e.high - e.low)


def test_bootstrap_is_seeded_and_zero_resamples_collapses():
    a = M.bootstrap(Y_TRUE, Y_PRED, 3, n_resamples=200, seed=3)
    b = M.bootstrap(Y_TRUE, Y_PRED, 3, n_resamples=200, seed=3)
    assert a == b
    none = M.bootstrap(Y_TRUE, Y_PRED, 3, n_resamples=0)
    assert none["uar"].low == none["uar"].value == none["uar"].high
    assert none["uar"].as_dict("uar") == {"uar": none["uar"].value, "uar_ci_low": none["uar"].value,
                                          "uar_ci_high": none["uar"].value}


def test_perfect_predictions_have_a_degenerate_interval_at_one():
    est = M.bootstrap(Y_TRUE, Y_TRUE, 3, n_resamples=100)
    assert est["uar"].value == est["uar"].low == est["uar"].high == 1.0
