"""Strategies that spend inference compute where a signal (the capability token, or a free one)
says it helps: Best-of-N and majority over a pool, adaptive sampling and early pruning over a
driver (live on the sampler, or replayed exactly from a pool)."""

from jaxselfeval.strategies.rounds import adaptive, prune, threshold_sweep
from jaxselfeval.strategies.config import AdaptiveConfig, PruneConfig, check_threshold
from jaxselfeval.strategies.driver import SIGNALS, LiveDriver, PoolDriver
from jaxselfeval.strategies.run import Runner, add_rm_scores, pool_records, sample_pool

__all__ = ["AdaptiveConfig", "PruneConfig", "check_threshold", "Runner", "adaptive", "prune",
           "add_rm_scores", "pool_records", "sample_pool", "threshold_sweep", "SIGNALS",
           "LiveDriver", "PoolDriver"]
