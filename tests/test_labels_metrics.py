"""Capability targets on hand-made reward lists; metrics on hand-made inputs."""

import numpy as np
import pytest

from jaxselfeval.selfeval.labels import capability_targets, truncation_points
from jaxselfeval.selfeval.metrics import auroc, brier, ece, plot_reliability


def test_targets_verifier_rewards():
    t = capability_targets([1, 0, 0, 1, 0])
    # correct: every other sample is <= it; wrong: the 2 other wrong of 4 others
    np.testing.assert_allclose(t, [1, 0.5, 0.5, 1, 0.5])


def test_targets_all_equal_and_single():
    np.testing.assert_allclose(capability_targets([0, 0, 0]), [1, 1, 1])
    np.testing.assert_allclose(capability_targets([0.3]), [1.0])


def test_targets_scalar_rewards_ties_and_margin():
    np.testing.assert_allclose(capability_targets([0.1, 0.5, 0.5, 0.9]), [0, 2 / 3, 2 / 3, 1])
    # a margin of 0.45 makes 0.1 tie with 0.5s
    np.testing.assert_allclose(capability_targets([0.1, 0.5, 0.5, 0.9], margin=0.45),
                               [2 / 3, 1, 1, 1])


def test_truncation_points():
    assert truncation_points(40, [16, 32, 64]) == [16, 32]
    assert truncation_points(16, [16]) == []


def test_auroc():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))


def test_brier_ece_and_plot(tmp_path):
    assert brier([1, 0], [1, 0]) == 0.0
    assert brier([0.5], [1]) == 0.25
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = rng.uniform(size=20000) < p  # calibrated by construction
    assert ece(p, y) < 0.02
    assert ece(np.full(1000, 0.9), np.zeros(1000)) == pytest.approx(0.9)
    out = plot_reliability(p, y, tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 5000 and out.endswith("rel.png")
