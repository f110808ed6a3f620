"""What the harness counts per prompt, and how it aggregates.

Tokens generated include probe tokens (a probe of k tokens over c candidates counts k*c), so
strategies that probe pay for it in the same currency as sampling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence


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
    n = len(records)
    if n == 0:
        return {"n": 0}
    acc = sum(r.correct for r in records) / n
    se = math.sqrt(max(acc * (1 - acc), 0.0) / n)
    return {
        "n": n,
        "accuracy": acc,
        "accuracy_ci95": 1.96 * se,
        "mean_samples": sum(r.samples for r in records) / n,
        "mean_tokens": sum(r.tokens for r in records) / n,
        "mean_gen_tokens": sum(r.gen_tokens for r in records) / n,
        "mean_probe_tokens": sum(r.probe_tokens for r in records) / n,
        "wall_s": sum(r.wall_s for r in records),
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
