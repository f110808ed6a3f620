"""The strategy table: each name once, and every pooled strategy picks by its own field."""

import dataclasses

import numpy as np
import pytest

from jaxselfeval.strategies.registry import BY_CLI, BY_RECORD, CLI_NAMES, EVAL_POOLED, STRATEGIES
from jaxselfeval.strategies.run import pool_records, vote


@dataclasses.dataclass
class _Ex:
    id: str
    answer: str
    difficulty: int = 0


def _pool():
    """One prompt, four candidates: right ones at 1 and 3; the token prefers 2, the likelihood
    prefers 1, the reward model 3, their product 1; the most common answer is "7" (wrong)."""
    return {"n": 4, "correct": np.array([[0.0, 1.0, 0.0, 1.0]]),
            "score": np.array([[0.2, 0.5, 0.9, 0.3]]),
            "likelihood": np.array([[-1.2, -0.1, -2.3, -0.5]]),  # mean token log-probs
            "rm_score": np.array([[0.0, 0.1, 0.2, 0.9]]), "length": np.array([[5, 6, 7, 8]]),
            "answers": [["7", "5", "7", "5x"]], "outs": [[1], [2], [3], [4]]}


def test_each_name_once_and_every_cli_name_is_a_strategy():
    assert len(BY_RECORD) == len(STRATEGIES) and len(BY_CLI) == len(CLI_NAMES)
    assert set(EVAL_POOLED) <= {s.record for s in STRATEGIES if s.pooled}
    assert "greedy" not in EVAL_POOLED and "bon_rm" not in EVAL_POOLED  # run / optional


@pytest.mark.parametrize("record,chosen,probes", [("one", 0, 0), ("bon_self", 2, 4 * 3),
                                                  ("bon_likelihood", 1, 0), ("bon_rm", 3, 0),
                                                  ("bon_combined", 1, 4 * 3), ("oracle", 1, 0)])
def test_pooled_strategies_pick_by_their_own_signal(record, chosen, probes):
    rec, = pool_records(_pool(), [_Ex("a", "5")], record, probe_len=3)
    assert rec.output == [chosen + 1]
    assert rec.correct == _pool()["correct"][0, chosen] and rec.probe_tokens == probes


def test_majority_scores_the_most_common_answer_and_run_strategies_are_refused():
    rec, = pool_records(_pool(), [_Ex("a", "5")], "majority")
    assert rec.correct == 0.0 and rec.output == [1]  # "7" twice, the first of them
    with pytest.raises(ValueError, match="adaptive is not read off a pool"):
        pool_records(_pool(), [_Ex("a", "5")], "adaptive")


@pytest.mark.parametrize("record,chosen,correct,probes", [
    # "7": 0.2 + 0.9 = 1.1 against "5": 0.5, "5x" 0.3 -> candidate 0, a wrong answer
    ("vote_self", 0, 0.0, 4 * 3),
    # mean token probabilities: "7" e^-1.2 + e^-2.3 = 0.40, "5" e^-0.1 = 0.90 -> candidate 1
    ("vote_likelihood", 1, 1.0, 0),
    # products: "7" 0.2 e^-1.2 + 0.9 e^-2.3 = 0.15, "5" 0.5 e^-0.1 = 0.45 -> candidate 1
    ("vote_combined", 1, 1.0, 4 * 3)])
def test_a_weighted_vote_sums_each_answers_signal(record, chosen, correct, probes):
    rec, = pool_records(_pool(), [_Ex("a", "5")], record, probe_len=3)
    assert rec.output == [chosen + 1] and rec.correct == correct and rec.probe_tokens == probes


def test_vote_ties_go_to_the_answer_seen_first_and_no_answer_is_no_pick():
    assert vote(["3", None, "4", "4", "3"], [1.0, 9.0, 1.0, 1.0, 1.0]) == 0
    assert vote(["3", "4"], [0.25, 0.5]) == 1
    assert vote([None, None], [1.0, 1.0]) is None
    pool = {**_pool(), "answers": [[None, None, None, None]]}
    rec, = pool_records(pool, [_Ex("a", "5")], "vote_likelihood")
    assert rec.correct == 0.0 and rec.output == [1]
