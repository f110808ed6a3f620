"""Eval rough edges: adaptive round sizes derived from n when the default schedule would draw
more; an explicit schedule that draws more than n stays an error naming both."""

import pytest

import jaxselfeval as jse
from jaxselfeval.evaluate.harness import EvalConfig
from jaxselfeval.strategies.config import doubling_rounds, rounds_for_n


@pytest.mark.parametrize("n,want", [(1, (1,)), (2, (1, 1)), (4, (1, 1, 2)), (6, (1, 1, 2, 2)),
                                    (16, (1, 1, 2, 4, 8)), (20, (1, 1, 2, 4, 8, 4))])
def test_doubling_rounds(n, want):
    assert doubling_rounds(n) == want and sum(want) == n


def test_eval_n4_uses_rounds_within_n():
    plain, combined = EvalConfig(n=4).adaptive_configs()
    assert plain.rounds == (1, 1, 2) and plain.temperatures == (0.0, 0.7, 1.0)
    assert combined.rounds == (1, 1, 2) and plain.max_samples == 4
    EvalConfig(n=4).validate()
    assert EvalConfig().adaptive_configs()[0].rounds == (1, 1, 2, 4, 8)  # n=16: unchanged


def test_explicit_rounds_over_n_still_error():
    assert rounds_for_n(4, (1, 2, 4), (0, 1, 1)) == ((1, 2, 4), (0, 1, 1))
    with pytest.raises(jse.JSEError, match="more than max_samples=4"):
        EvalConfig(n=4, rounds=(1, 2, 4), round_temperatures=(0, 1, 1)).validate()
