"""Every strategy once: its `generate --strategy` name, the name of its records in an
evaluation, what ranks its candidates and what a report calls it. `generate`, the evaluation
harness, `pool_records` and the report read this table; none spells a strategy's name itself."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Strategy:
    cli: str | None  # the `generate --strategy` name (None: an evaluation's reference only)
    record: str  # its records' name in results.json and the report
    label: str  # the report's row: str.format over n, sampling, threshold, prune_at, keep, ...
    pooled: bool  # picks among a prompt's first n pooled candidates (else rounds on a driver)
    ranks_by: str | None = None  # the pool field it takes the argmax of (pooled strategies)
    votes_by: str | None = None  # or: the signal each distinct answer sums ("one": a count)
    token: bool = False  # reads the capability token (needs a self-eval-trained model)
    marker: str | None = None  # its point on the accuracy-vs-samples plot


STRATEGIES = (
    Strategy("greedy", "greedy", "greedy", pooled=True),
    Strategy("sample", "one", "one sample ({sampling})", pooled=True, marker="x"),
    Strategy("majority", "majority", "majority vote of {n}", pooled=True, votes_by="one",
             marker="^"),
    Strategy("vote", "vote_self", "answer vote of {n} weighted by self-evaluation", pooled=True,
             votes_by="self", token=True),
    Strategy("vote_likelihood", "vote_likelihood",
             "answer vote of {n} weighted by the policy's own likelihood (no training)",
             pooled=True, votes_by="likelihood"),
    Strategy("vote_combined", "vote_combined",
             "answer vote of {n} weighted by self-evaluation x likelihood", pooled=True,
             votes_by="combined", token=True),
    Strategy("bon", "bon_self", "Best-of-{n} by self-evaluation", pooled=True, ranks_by="score",
             token=True),
    Strategy("bon_rm", "bon_rm", "Best-of-{n} by external reward model", pooled=True,
             ranks_by="rm_score", marker="D"),
    Strategy("bon_likelihood", "bon_likelihood",
             "Best-of-{n} by the policy's own likelihood (no training)", pooled=True,
             ranks_by="likelihood", marker="v"),
    Strategy("bon_combined", "bon_combined", "Best-of-{n} by self-evaluation x likelihood",
             pooled=True, ranks_by="combined", token=True),
    Strategy(None, "oracle", "oracle Best-of-{n} (pass@{n})", pooled=True, ranks_by="correct",
             marker="*"),
    Strategy("adaptive", "adaptive", "adaptive (threshold {threshold})", pooled=False, token=True),
    Strategy("adaptive_prune", "adaptive_pruned",
             "adaptive + pruning (threshold {threshold}, rounds pruned at {prune_at} tokens, "
             "keep {combined_keep})", pooled=False, token=True),
    Strategy("prune", "pruned_run", "pruned at {prune_at} tokens, keep {keep}", pooled=False,
             token=True),
)
BY_CLI = {s.cli: s for s in STRATEGIES if s.cli}
BY_RECORD = {s.record: s for s in STRATEGIES}
CLI_NAMES = tuple(BY_CLI)
# what an evaluation reads off its pool for every prompt (bon_rm with a reward model only)
EVAL_POOLED = tuple(s.record for s in STRATEGIES
                    if s.pooled and s.record not in ("greedy", "bon_rm"))
