"""The strategy table: each name once, and every pooled strategy picks by its own field."""

import dataclasses

import numpy as np
import pytest

from jaxselfeval.strategies.registry import BY_CLI, BY_RECORD, CLI_NAMES, EVAL_POOLED, STRATEGIES
from jaxselfeval.strategies.run import pool_records


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
