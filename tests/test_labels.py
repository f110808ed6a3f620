"""Capability targets on hand-made reward lists; truncation points; row expansion."""

import numpy as np
import pytest

from jaxselfeval.errors import JSEError
from jaxselfeval.selfeval.labels import capability_rows, capability_targets, truncation_points


def test_verifier_rewards_correct_gets_one_wrong_gets_share_of_wrong():
    # 2 correct, 3 wrong: a wrong sample ties the 2 other wrong of its 4 others
    np.testing.assert_allclose(capability_targets([1, 0, 0, 1, 0]), [1, .5, .5, 1, .5])
    # 1 correct of 5: wrong ones tie 3 of 4 others -> a hard prompt does not push to resample
    np.testing.assert_allclose(capability_targets([0, 0, 1, 0, 0]), [.75, .75, 1, .75, .75])
    # booleans (a verifier's output) work the same
    np.testing.assert_allclose(capability_targets([True, False]), [1, 0])


def test_all_equal_ties_and_single_sample():
    np.testing.assert_allclose(capability_targets([0, 0, 0]), [1, 1, 1])
    np.testing.assert_allclose(capability_targets([0.7] * 4), [1, 1, 1, 1])
    np.testing.assert_allclose(capability_targets([0.3]), [1.0])  # no other sample: 1.0
    assert capability_targets([]).shape == (0,)
    assert capability_targets([1, 0]).dtype == np.float32


def test_scalar_rewards_ties_and_margin():
    r = [0.1, 0.5, 0.5, 0.9]
    np.testing.assert_allclose(capability_targets(r), [0, 2 / 3, 2 / 3, 1], rtol=1e-6)
    # margin 0.45: 0.1 now ties the two 0.5s (0.5 <= 0.55), not 0.9
    np.testing.assert_allclose(capability_targets(r, margin=0.45), [2 / 3, 1, 1, 1], rtol=1e-6)
    # negative margin: a tie is no longer "not beaten"
    np.testing.assert_allclose(capability_targets(r, margin=-0.01), [0, 1 / 3, 1 / 3, 1],
                               rtol=1e-6)
    # the target is the fraction of OTHER samples: the sample itself is not counted
    np.testing.assert_allclose(capability_targets([3.0, 1.0, 2.0]), [1, 0, .5])


def test_bad_rewards_are_clear_errors():
    with pytest.raises(JSEError, match="reward of sample 1 is nan"):
        capability_targets([1.0, float("nan")])
    with pytest.raises(JSEError, match="margin"):
        capability_targets([1.0, 0.0], margin=float("inf"))


def test_truncation_points():
    assert truncation_points(40, [16, 32, 64]) == [16, 32]
    assert truncation_points(16, [16]) == []  # the full response again: not a copy
    assert truncation_points(17, [16, 8, 16]) == [8, 16]
    with pytest.raises(JSEError, match="positive token count"):
        truncation_points(10, [0, 8])


def test_capability_rows_full_and_truncated_copies_share_the_target():
    rows = capability_rows([5, 6], [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3]], [0, 1],
                           truncations=[4, 8], example="e7")
    assert [(r["candidate"], r["truncation"], len(r["response_ids"])) for r in rows] == \
        [(0, 0, 10), (0, 4, 4), (0, 8, 8), (1, 0, 3)]
    assert [r["target"] for r in rows] == [0.0, 0.0, 0.0, 1.0]
    assert rows[1]["response_ids"] == [1, 2, 3, 4] and rows[1]["reward"] == 0.0
    assert all(r["prompt_ids"] == [5, 6] and r["example"] == "e7" for r in rows)
    with pytest.raises(JSEError, match="2 responses but 1 rewards"):
        capability_rows([1], [[1], [2]], [1])


def test_reward_targets_are_the_rewards_and_retarget_swaps_only_the_target():
    from jaxselfeval.selfeval.labels import token_targets
    from jaxselfeval.selfeval.train import retarget

    r = [1.0, 0.0, 0.0, 1.0]
    np.testing.assert_array_equal(token_targets(r, "reward"), r)
    np.testing.assert_allclose(token_targets(r, "capability"), capability_targets(r))
    with pytest.raises(JSEError, match="target=reward needs rewards in"):
        token_targets([0.5, 2.0], "reward")
    with pytest.raises(JSEError, match="target must be one of capability, reward"):
        token_targets(r, "correct")
    rows = [{"target": 0.75, "reward": 0.0, "example": 3}, {"target": 1.0, "reward": 1.0,
                                                            "example": 3}]
    assert [x["target"] for x in retarget(rows, "reward")] == [0.0, 1.0]
    assert retarget(rows, "capability") is rows and rows[0]["target"] == 0.75
