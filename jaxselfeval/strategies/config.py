"""Strategy settings with validation (thresholds, round sizes, temperature schedules, pruning)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxselfeval.errors import JSEError


DEFAULT_ROUNDS = (1, 1, 2, 4, 8)


def doubling_rounds(n: int) -> tuple[int, ...]:
    """Round sizes 1, 1, 2, 4, ... drawing exactly n samples in all (the last round takes what
    is left): 16 -> (1, 1, 2, 4, 8), 4 -> (1, 1, 2), 6 -> (1, 1, 2, 2)."""
    if int(n) < 1:
        raise JSEError(f"n must be >= 1, got {n}")
    out, size = [], 1
    while sum(out) < n:
        out.append(min(size, n - sum(out)))
        size = 1 if len(out) == 1 else size * 2
    return tuple(out)


def rounds_for_n(n: int, rounds, temperatures) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(rounds, temperatures) for at most n samples: the given ones, unless they are the default
    schedule and it draws more than n (then `doubling_rounds(n)`, temperatures cut to match). A
    schedule given explicitly is kept as is (AdaptiveConfig then names the mismatch)."""
    rounds = tuple(int(r) for r in rounds)
    temps = tuple(temperatures) if isinstance(temperatures, Sequence) else (temperatures,)
    if rounds != DEFAULT_ROUNDS or sum(rounds) <= n:
        return rounds, temps
    new = doubling_rounds(n)
    if len(temps) == len(rounds):
        temps = (temps + temps[-1:] * len(new))[:len(new)]
    return new, temps


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive sampling: rounds of growing size; a prompt stops once its best score >= threshold.

    temperatures: one per round (annealed: first round near-greedy, later hotter); a single
    value is used for every round.
    prune_at / keep_fraction (adaptive sampling and early pruning combined): in each round of r
    candidates, probe all of them after `prune_at` tokens and decode only the best
    max(1, round(r * keep_fraction)) to the end (rounds that would keep all are not probed early).
    """

    rounds: tuple[int, ...] = DEFAULT_ROUNDS
    threshold: float = 0.9
    temperatures: tuple[float, ...] = (0.3, 0.7, 1.0, 1.0, 1.0)
    max_samples: int = 16
    prune_at: int | None = None
    keep_fraction: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "rounds", tuple(int(r) for r in self.rounds))
        temps = tuple(float(t) for t in (self.temperatures if isinstance(self.temperatures, Sequence)
                                         else [self.temperatures]))
        if len(temps) == 1:
            temps = temps * len(self.rounds)
        object.__setattr__(self, "temperatures", temps)
        check_threshold(self.threshold)
        if not self.rounds or min(self.rounds) < 1:
            raise JSEError(f"round sizes must be >= 1, got {list(self.rounds)}")
        if sum(self.rounds) > self.max_samples:
            raise JSEError(f"round sizes {list(self.rounds)} draw {sum(self.rounds)} samples, more "
                           f"than max_samples={self.max_samples}: shrink the rounds or raise max_samples")
        if len(temps) != len(self.rounds):
            raise JSEError(f"{len(temps)} temperatures for {len(self.rounds)} rounds: give one per "
                           "round (or a single value)")
        if min(temps) < 0:
            raise JSEError("temperatures must be >= 0 (0 = greedy)")
        if self.prune_at is not None and int(self.prune_at) < 1:
            raise JSEError(f"prune_at must be >= 1 token, got {self.prune_at}")
        if not 0.0 < float(self.keep_fraction) <= 1.0:
            raise JSEError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")

    def keep(self, r: int) -> int:
        """Candidates of a round of r decoded to the end (r when this round is not pruned)."""
        if self.prune_at is None:
            return r
        return min(r, max(1, round(r * self.keep_fraction)))


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Early pruning: probe every candidate at `at_tokens`, keep `keep_fraction` of them."""

    n: int = 16
    at_tokens: int = 16
    keep_fraction: float = 0.25
    temperature: float = 1.0

    def __post_init__(self):
        if self.n < 1:
            raise JSEError(f"n must be >= 1, got {self.n}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise JSEError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.at_tokens < 1:
            raise JSEError(f"at_tokens must be >= 1, got {self.at_tokens}")

    @property
    def keep(self) -> int:
        return max(1, round(self.n * self.keep_fraction))


def check_threshold(t: float) -> float:
    if not 0.0 <= float(t) <= 1.0:
        raise JSEError(f"threshold must be in [0, 1] (a probability of 'No'), got {t}")
    return float(t)
