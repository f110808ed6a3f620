"""Adaptive sampling and early pruning, once, over a driver (`driver.LiveDriver` on the sampler,
`driver.PoolDriver` replaying a pool): the same code gives the real run and its exact replay,
for every signal (the capability token, the policy's likelihood, both)."""

from __future__ import annotations

import time

import numpy as np

from jaxselfeval.evaluate.records import PromptRecord, aggregate_arrays
from jaxselfeval.strategies.config import AdaptiveConfig, PruneConfig


def _top(signal: np.ndarray, keep: int) -> np.ndarray:
    """The `keep` best columns of each row [A, r], in column order (ties to the lower index)."""
    return np.sort(np.argsort(-signal, axis=1, kind="stable")[:, :keep], axis=1)


def adaptive(driver, cfg: AdaptiveConfig, *, trace=False):
    """Adaptive sampling: rounds of growing size over the prompts still active; a prompt stops
    when its best signal reaches the threshold. With cfg.prune_at set, each round is also pruned
    early (`AdaptiveConfig.keep`): its candidates are scored after prune_at tokens and only the
    best are decoded to the end.

    With trace=True every round runs for every prompt (no stopping) and the per-round best
    signals / correctness are returned too, for exact threshold sweeps (`threshold_sweep`).
    """
    examples = driver.examples
    G = len(examples)
    t0 = time.perf_counter()
    best, best_ok = np.full(G, -np.inf), np.zeros(G)
    best_out: list = [None] * G
    samples, gen, probes = (np.zeros(G, int) for _ in range(3))
    active, cand, rounds = np.arange(G), 0, []
    for r, temp in zip(cfg.rounds, cfg.temperatures):
        if len(active) == 0:
            break
        rd = driver.round(active, r, temp, cand)
        keep = cfg.keep(r)
        if keep < r:  # prune this round: score all r early, decode only the best `keep`
            s_early, L_early = rd.early(cfg.prune_at)
            kept = _top(s_early, keep)
            gen[active] += L_early.sum(1) - np.take_along_axis(L_early, kept, 1).sum(1)
            probes[active] += r * driver.probe_len
            rd.keep(kept)
        f = rd.finish()
        j = np.argmax(f.signal, axis=1)
        samples[active] += r
        gen[active] += f.length.sum(1)
        probes[active] += keep * driver.probe_len
        for i, g in enumerate(active):
            if f.signal[i, j[i]] > best[g]:
                best[g], best_ok[g] = f.signal[i, j[i]], f.correct[i, j[i]]
                best_out[g] = None if f.outputs is None else f.outputs[i][j[i]]
        rounds.append({"best": best.copy(), "ok": best_ok.copy(), "samples": samples.copy(),
                       "gen": gen.copy(), "probes": probes.copy()})
        cand += r
        if not trace:
            active = active[best[active] < cfg.threshold]
    wall = time.perf_counter() - t0
    recs = [PromptRecord(e.id, float(best_ok[g]), int(samples[g]), int(gen[g]), int(probes[g]),
                         wall_s=wall / G, difficulty=e.difficulty, chosen_score=float(best[g]),
                         output=best_out[g])
            for g, e in enumerate(examples)]
    return (recs, rounds) if trace else recs


TRACE_FIELDS = ("best", "ok", "samples", "gen", "probes")


def stack_trace(rounds) -> dict:
    """A trace (`adaptive(..., trace=True)`'s rounds) as arrays {field: [G, R]}."""
    return {f: np.stack([np.asarray(r[f], np.float64) for r in rounds], 1) for f in TRACE_FIELDS}


def stopped(trace: dict, threshold: float) -> dict:
    """Each prompt's figures {field: [G]} where `adaptive` with this threshold stops it: after
    the first round whose best signal reaches the threshold, else after the last round."""
    best = trace["best"]
    hit = best >= threshold
    k = np.where(hit.any(1), hit.argmax(1), best.shape[1] - 1)
    return {f: trace[f][np.arange(best.shape[0]), k] for f in TRACE_FIELDS}


def threshold_sweep(rounds, examples, thresholds):
    """Records for each threshold from a trace (identical to running `adaptive` with that
    threshold; `trace_sweep` gives their aggregates)."""
    trace, out = stack_trace(rounds), {}
    for th in thresholds:
        at = stopped(trace, th)
        out[float(th)] = [PromptRecord(e.id, float(at["ok"][g]), int(at["samples"][g]),
                                       int(at["gen"][g]), int(at["probes"][g]),
                                       difficulty=e.difficulty, chosen_score=float(at["best"][g]))
                          for g, e in enumerate(examples)]
    return out


def sweep_thresholds(trace: dict, base=(), levels: int = 2000) -> list[float]:
    """The thresholds to sweep for a trace: `base`, and every distinct value a prompt's best
    signal takes after any round. A prompt stops at the first round whose best reaches the
    threshold, so a threshold between two such values stops the same prompts as the upper one:
    these are all the sweep's distinct outcomes, and its best at a budget is exact, for every
    signal alike (a mean token probability crowds near 1, the token's score does not). Beyond
    `levels` values, that many quantiles of them."""
    v = np.unique(np.asarray(trace["best"], np.float64))
    v = v[np.isfinite(v)]
    if len(v) > levels:
        v = np.quantile(v, np.linspace(0, 1, levels))
    return sorted({float(t) for t in base} | {float(x) for x in v})


def trace_sweep(trace: dict, thresholds) -> dict:
    """{threshold: aggregate} of a stacked trace, each prompt `stopped` at that threshold."""
    out = {}
    for th in thresholds:
        at = stopped(trace, th)
        out[float(th)] = aggregate_arrays(at["ok"], at["samples"], at["gen"], at["probes"])
    return out


def prune(driver, cfg: PruneConfig):
    """Early pruning: n candidates per prompt, scored at `at_tokens`, the best `keep` decoded to
    the end, the best of them by the final signal returned. Survivors' tokens equal their
    unpruned runs. Records carry each prompt's share of the wall time."""
    examples = driver.examples
    G = len(examples)
    t0 = time.perf_counter()
    rd = driver.round(np.arange(G), cfg.n, cfg.temperature, 0)
    s_early, L_early = rd.early(cfg.at_tokens)
    kept = _top(s_early, cfg.keep)
    rd.keep(kept)
    f = rd.finish()
    wall = time.perf_counter() - t0
    j = np.argmax(f.signal, axis=1)
    gen = L_early.sum(1) - np.take_along_axis(L_early, kept, 1).sum(1) + f.length.sum(1)
    return [PromptRecord(e.id, float(f.correct[g, j[g]]), cfg.n, int(gen[g]),
                         (cfg.n + cfg.keep) * driver.probe_len, wall_s=wall / G,
                         difficulty=e.difficulty, chosen_score=float(f.signal[g, j[g]]),
                         output=None if f.outputs is None else f.outputs[g][j[g]])
            for g, e in enumerate(examples)]
