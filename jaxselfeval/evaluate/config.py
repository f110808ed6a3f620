"""The evaluation's settings, validated in one place (`EvalConfig.validate`)."""

from __future__ import annotations

import dataclasses

from jaxselfeval.errors import JSEError
from jaxselfeval.evaluate.report import Goals
from jaxselfeval.strategies.config import AdaptiveConfig, PruneConfig, check_threshold, rounds_for_n


@dataclasses.dataclass
class EvalConfig:
    task: str = "arithmetic"
    task_args: dict = dataclasses.field(default_factory=dict)  # e.g. {seed: 1}: other problems
    split: str = "test"
    limit: int = 300
    skip: int = 0  # problems skipped at the split's start (a second held-out set: skip=300)
    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus of every sampled draw (pool and adaptive rounds); 1 = none
    max_new_tokens: int = 96
    batch_prompts: int = 100
    rounds: tuple = (1, 1, 2, 4, 8)  # the default is cut to n when it draws more (rounds_for_n)
    round_temperatures: tuple = (0.0, 0.7, 1.0, 1.0, 1.0)
    threshold: float = 0.8
    # swept for every signal (each a probability: the token's score, the likelihood's
    # geometric-mean token probability, their product); dense near 1, where they crowd
    thresholds: tuple = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96,
                         0.97, 0.98, 0.99, 0.995)
    prune_at: tuple = (8, 16)
    keep_fractions: tuple = (0.125, 0.25, 0.5)
    combined_keep: float = 0.25  # adaptive + pruning: each round pruned at min(prune_at) to this
    seed: int = 0
    # "first": adaptive sampling and the pruned run run for real on the first chunk (timed there,
    # and checked against the same records read off its pool and greedy run: the same candidates
    # under the same keys); later chunks read them off their pool. "all": real on every chunk.
    # "none": read off the pool everywhere, nothing timed (no wall-time figures; saves the
    # first chunk's real runs, ~2x its time)
    real_runs: str = "first"
    # the goals the report marks met / NOT met (a section: goals.auroc=0.75)
    goals: Goals = dataclasses.field(default_factory=Goals)

    def adaptive_configs(self) -> tuple[AdaptiveConfig, AdaptiveConfig]:
        """(adaptive sampling, adaptive + pruning: rounds pruned at min(prune_at) to
        combined_keep), validated."""
        rounds, temps = rounds_for_n(self.n, self.rounds, self.round_temperatures)
        plain = AdaptiveConfig(rounds, self.threshold, temps, self.n)
        return plain, dataclasses.replace(plain, prune_at=min(self.prune_at),
                                          keep_fraction=self.combined_keep)

    def validate(self):
        for key, low in (("limit", 1), ("skip", 0), ("n", 1), ("batch_prompts", 1),
                         ("max_new_tokens", 1)):
            if getattr(self, key) < low:
                raise JSEError(f"{key} must be >= {low}, got {getattr(self, key)}")
        check_threshold(self.threshold)
        for t in self.thresholds:
            check_threshold(t)
        if not 0.0 < self.combined_keep <= 1.0:
            raise JSEError(f"combined_keep must be in (0, 1] (the share of each adaptive round "
                           f"decoded past the prune point), got {self.combined_keep}")
        if self.real_runs not in ("first", "all", "none"):
            raise JSEError(f"real_runs must be 'first', 'all' or 'none', got {self.real_runs!r}")
        self.adaptive_configs()
        for f in self.keep_fractions:
            PruneConfig(self.n, min(self.prune_at), f)
