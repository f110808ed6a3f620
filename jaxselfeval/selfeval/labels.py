"""Capability-aware targets (DESIGN.md "Labels").

For n on-policy samples of one prompt with rewards r_i, the target of sample i is the fraction of
the OTHER samples j with r_j <= r_i + margin: the probability that a fresh sample would not beat
it. With 0/1 rewards a correct answer gets 1 and a wrong one the share of wrong samples among
the others, so a prompt the model almost never solves does not push it to resample forever.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def capability_targets(rewards: Sequence[float], margin: float = 0.0) -> np.ndarray:
    """f32 [n] targets. With a single sample (no others) the target is 1.0: nothing beat it."""
    r = np.asarray(rewards, np.float64)
    n = len(r)
    if n == 1:
        return np.ones(1, np.float32)
    not_beaten = (r[None, :] <= r[:, None] + margin).astype(np.float64)  # [i, j]
    np.fill_diagonal(not_beaten, 0.0)
    return (not_beaten.sum(1) / (n - 1)).astype(np.float32)


def truncation_points(response_len: int, points: Sequence[int]) -> list[int]:
    """The configured token counts strictly inside the response (mid-generation copies)."""
    return sorted({int(p) for p in points if 0 < int(p) < response_len})
