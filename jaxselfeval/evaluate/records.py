"""What the harness counts per prompt, and how it aggregates.

Tokens generated include probe tokens (a probe of k tokens over c candidates counts k*c), so
strategies that probe pay for it in the same currency as sampling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np


@dataclasses.dataclass
class PromptRecord:
    """One prompt under one strategy."""

    prompt_id: str
    correct: float  # 1.0 / 0.0 (or a reward)
    samples: int  # candidates started (pruned ones count)
    gen_tokens: int  # decoded tokens, all candidates
    probe_tokens: int = 0  # tokens evaluated for self-evaluation probes
    wall_s: float = 0.0  # share of the batch's wall time
    difficulty: int | None = None
    chosen_score: float | None = None
    output: list | None = None  # the chosen response's token ids (not aggregated)

    @property
    def tokens(self) -> int:
        return self.gen_tokens + self.probe_tokens


def aggregate(records: Sequence[PromptRecord]) -> dict:
    """Accuracy with a 95% normal-approximation interval, mean samples/tokens, total wall time."""
    if not records:
        return {"n": 0}
    return aggregate_arrays(*(np.array([getattr(r, f) for r in records], np.float64)
                              for f in ("correct", "samples", "gen_tokens", "probe_tokens",
                                        "wall_s")))


def aggregate_arrays(correct, samples, gen_tokens, probe_tokens, wall_s=None) -> dict:
    """`aggregate` of per-prompt arrays [G] (the records' fields)."""
    n = len(correct)
    acc = float(np.sum(correct)) / n
    se = math.sqrt(max(acc * (1 - acc), 0.0) / n)
    return {
        "n": n,
        "accuracy": acc,
        "accuracy_ci95": 1.96 * se,
        "mean_samples": float(np.sum(samples)) / n,
        "mean_tokens": float(np.sum(gen_tokens) + np.sum(probe_tokens)) / n,
        "mean_gen_tokens": float(np.sum(gen_tokens)) / n,
        "mean_probe_tokens": float(np.sum(probe_tokens)) / n,
        "wall_s": 0.0 if wall_s is None else float(np.sum(wall_s)),
    }


def by_difficulty(records: Iterable[PromptRecord]) -> dict[int, dict]:
    groups: dict[int, list[PromptRecord]] = {}
    for r in records:
        if r.difficulty is not None:
            groups.setdefault(r.difficulty, []).append(r)
    return {d: aggregate(rs) for d, rs in sorted(groups.items())}


def gain_recovered(acc: float, baseline: float, best_of_n: float) -> float:
    """Share of the Best-of-N gain over `baseline` (the better of greedy and one sample) that
    `acc` recovers (nan if Best-of-N gains nothing over it)."""
    gain = best_of_n - baseline
    return (acc - baseline) / gain if gain > 0 else float("nan")


ADAPTIVE_BUDGET = 1.2  # mean samples a prompt, the paper's budget for adaptive sampling


def best_within(sweep: dict, budget: float = ADAPTIVE_BUDGET):
    """(threshold, aggregate) of a threshold sweep {threshold: aggregate}: the most accurate
    threshold using <= `budget` mean samples, or (None, None)."""
    cheap = [(float(th), a) for th, a in sweep.items() if a["mean_samples"] <= budget]
    return max(cheap, key=lambda x: x[1]["accuracy"]) if cheap else (None, None)
