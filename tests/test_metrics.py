"""Metrics against hand-computed values (no sklearn); the reliability PNG."""

import itertools

import numpy as np
import pytest

from jaxselfeval.errors import JSEError
from jaxselfeval.selfeval.metrics import (auroc, auroc_within, brier, ece, plot_reliability,
                                          reliability_diagram)


def _auroc_pairs(s, y):
    """Reference: the share of (positive, negative) pairs ordered right, ties 1/2."""
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0
                    for p, n in itertools.product(pos, neg)])


def test_auroc_hand_made():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # one tie across classes: 3 pairs right, 1 pair tied -> (3 + 0.5) / 4
    assert auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == 0.875
    assert np.isnan(auroc([0.1, 0.2], [1, 1])) and np.isnan(auroc([0.1, 0.2], [0, 0]))


def test_auroc_matches_pair_count_with_many_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60) / 4.0  # heavy ties
    y = rng.integers(0, 2, 60)
    assert auroc(s, y) == pytest.approx(_auroc_pairs(s, y), abs=1e-12)


def test_brier():
    assert brier([1, 0], [1, 0]) == 0.0
    assert brier([0.5], [1]) == 0.25
    assert brier([0.2, 0.6], [0.5, 0.5]) == pytest.approx((0.09 + 0.01) / 2)  # soft targets


def test_ece_and_reliability_bins():
    # two bins, each calibrated exactly: ECE 0
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert ece(p, y, bins=2) == 0.0
    assert ece(p, y, bins=10) == 0.0
    # always 0.9, never right
    assert ece(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)
    # hand-made: bin [0, .5): mean p .2, mean y .5 (n=2); bin [.5, 1]: mean p .9, y 1 (n=2)
    assert ece([0.1, 0.3, 0.8, 1.0], [0, 1, 1, 1], bins=2) == pytest.approx((2 * .3 + 2 * .1) / 4)
    d = reliability_diagram([0.1, 0.3, 0.8, 1.0, 0.55], [0, 1, 1, 1, 0], bins=4)
    np.testing.assert_array_equal(d["count"], [1, 1, 1, 2])  # 1.0 lands in the last bin
    np.testing.assert_allclose(d["mean_target"], [0, 1, 0, 1])
    np.testing.assert_allclose(d["edges"], [0, .25, .5, .75, 1])
    assert np.isnan(reliability_diagram([0.1], [0], bins=2)["mean_pred"][1])  # empty bin


def test_bad_metric_inputs():
    with pytest.raises(JSEError, match="3 predictions but 2 targets"):
        brier([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(JSEError, match=r"probabilities in \[0, 1\]"):
        ece([0.5, 1.5], [0, 1])


def test_plot_reliability_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(size=2000)
    y = rng.uniform(size=2000) < p
    out = plot_reliability(p, y, tmp_path / "rel.png", bins=8, title="test")
    data = (tmp_path / "rel.png").read_bytes()
    assert out.endswith("rel.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_auroc_within_ignores_prompt_difficulty():
    # prompt a: everything scores high, prompt b: low; within each, the ranking is perfect
    s = [0.9, 0.95, 0.1, 0.2, 0.15]
    y = [0, 1, 0, 1, 1]
    g = ["a", "a", "b", "b", "b"]
    assert auroc_within(s, y, g) == 1.0
    assert auroc(s, y) < 1.0  # pooled: prompt a's wrong answer outranks prompt b's right ones
    assert auroc_within([0.5, 0.5], [0, 1], ["a", "a"]) == 0.5
    assert auroc_within([0.3, 0.7], [1, 0], ["a", "a"]) == 0.0
    assert np.isnan(auroc_within([0.3, 0.7], [1, 1], ["a", "b"]))
