"""Eval rough edges: adaptive round sizes derived from n when the default schedule would draw
more; an explicit schedule that draws more than n stays an error naming both."""

import numpy as np
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


def test_accuracy_splits_samples_by_kind_of_response():
    """`accuracy` on the shipped tiny model: the kinds' shares add up to one, and their
    share-weighted accuracies to sample@1; a nucleus narrower than one token makes every sample
    the greedy one (no problem mixed)."""
    import numpy as np

    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.evaluate.accuracy import format_accuracy, sample_accuracy
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    path = default_model_dir()
    model, tok, task = jse.load_pretrained(path), load_tokenizer(path), get_task("arithmetic")
    res = sample_accuracy(model, tok, task, limit=8, n=4, temperature=1.0, progress=False)
    bk = res["by_kind"]
    assert set(bk) == {"worked", "direct"}
    assert sum(d["share"] for d in bk.values()) == pytest.approx(1.0)
    assert sum(d["share"] * np.nan_to_num(d["accuracy"]) for d in bk.values()) == \
        pytest.approx(res["sample@1"])
    assert "worked responses:" in format_accuracy(res)
    narrow = sample_accuracy(model, tok, task, limit=8, n=4, temperature=1.0, top_p=1e-6,
                             progress=False)
    assert narrow["mixed"] == 0.0 and narrow["top_p"] == 1e-6


@pytest.mark.parametrize("n, pruned", [(16, 0.875), (2, 0.5)])
def test_headline_counts_the_candidates_really_pruned(n, pruned):
    """keep_fraction 0.125 of 2 candidates keeps 1: half pruned, not 88% (which passed the
    pruning goal's >= 75% on a run that pruned 50%)."""
    from jaxselfeval.evaluate.harness import _headline

    agg = {"accuracy": 0.5, "mean_samples": 1.0, "mean_tokens": 10.0}
    summary = {k: agg for k in ("one", "bon_self", "majority", "oracle", "greedy")}
    sw = {"threshold": {0.8: agg}, "prune": {"8:0.125": agg}}
    h = _headline(summary, sw, {"bon_full": 2.0, "pruned": 1.0}, EvalConfig(n=n))
    assert h["prune_fraction_pruned"] == pruned


def test_pool_ece_is_against_the_target_the_token_was_trained_on():
    """A token trained on the reward (P(right)) is calibrated against correctness, not against
    the capability targets: a score equal to correctness has ECE 0 there, not under the other."""
    from jaxselfeval.evaluate.harness import pool_stats

    correct = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], float)
    by_reward = pool_stats(correct, correct.copy(), target="reward")
    assert by_reward["ece"] == pytest.approx(0.0) and by_reward["ece_target"] == "reward"
    assert pool_stats(correct, correct.copy())["ece"] > 0.2  # the wrong ones' targets are 1/3, 2/3
