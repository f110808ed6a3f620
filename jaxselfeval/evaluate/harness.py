"""The evaluation harness: every strategy on a task split, chunk by chunk (resumable, split over
hosts), then the sweeps, the headline, results.json, the report and its plots. Its settings are
`evaluate.config.EvalConfig`, the pooled samples' statistics `evaluate.stats.pool_stats`."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from jaxselfeval.distributed import barrier, host_shard
from jaxselfeval.errors import JSEError
from jaxselfeval.evaluate.chunks import ChunkStore, fingerprint, merge
from jaxselfeval.evaluate.config import EvalConfig
from jaxselfeval.evaluate.records import (ADAPTIVE_BUDGET, PromptRecord, aggregate, best_within,
                                          gain_recovered)
from jaxselfeval.evaluate.report import plots, write_report
from jaxselfeval.evaluate.stats import adaptive_bound, pool_stats
from jaxselfeval.fileio import write_atomic
from jaxselfeval.sample import Engine
from jaxselfeval.strategies import rounds as A
from jaxselfeval.strategies import run as S
from jaxselfeval.strategies.driver import SIGNALS, LiveDriver, PoolDriver
from jaxselfeval.strategies.config import PruneConfig
from jaxselfeval.strategies.registry import EVAL_POOLED

log = logging.getLogger(__name__)


def evaluate(model, tokenizer, task, cfg: EvalConfig, out_dir, *, progress=True, rm=None,
             target: str = "capability") -> dict:
    """Run every strategy on `cfg.limit` problems; write results.json, report.md and plots.
    `rm`: an external reward model (`RewardModel`) for the Best-of-N-by-RM baseline; `target`:
    what the token was trained to predict (`selfeval.labels.TARGETS`), its ECE's reference.

    Work is done in chunks of `batch_prompts` problems, each saved under out_dir/chunks when
    done: a killed evaluation resumes at the first missing chunk, and on several hosts
    (`jax.distributed`) each host runs its share of the chunks (out_dir must be a directory every
    host sees); process 0 merges them and writes the report.
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exs = task.examples(cfg.split)[cfg.skip:cfg.skip + cfg.limit]
    if not exs:
        raise JSEError(f"no {cfg.split} problems from {cfg.skip} on: lower skip=")
    main = jax.process_index() == 0
    # every process checks whose chunks these are (the same file: the same verdict everywhere);
    # process 0 records it in a new directory
    store = ChunkStore(out / "chunks", fingerprint(cfg, model, len(exs), rm is not None),
                       writer=main)
    barrier("jse_eval_meta")
    starts = list(range(0, len(exs), cfg.batch_prompts))
    todo = [s for s in starts if not store.has(s)]
    mine = host_shard(todo)
    if len(todo) < len(starts):
        log.info("%d of %d chunks already evaluated in %s", len(starts) - len(todo), len(starts),
                 store.dir)
    if jax.process_count() > 1:
        log.info("process %d evaluates %d of the %d missing chunks", jax.process_index(),
                 len(mine), len(todo))
    if mine:
        run = S.Runner(model, tokenizer, task, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                       top_p=cfg.top_p)
        pc = PruneConfig(cfg.n, min(cfg.prune_at), min(cfg.keep_fractions), cfg.temperature)
        for s in tqdm(mine, desc="evaluating", unit="chunk", disable=not progress):
            store.write(s, _evaluate_chunk(run, rm, exs[s:s + cfg.batch_prompts], s, cfg, pc))
    barrier("jse_eval_chunks")
    if main:
        result = _summarize(merge([store.read(s) for s in starts]), cfg,
                            getattr(task, "kinds", ()), target)
        write_atomic(out / "results.json", json.dumps(result, indent=2, default=float))
        plots(result, out)
        write_report(result, out)
    barrier("jse_eval_written")
    return result if main else json.loads((out / "results.json").read_text())


def _evaluate_chunk(run, rm, ch, s: int, cfg: EvalConfig, pc: PruneConfig) -> dict:
    """Every strategy on one chunk of problems (global offset s) -> {recs, sweeps, wall, pooled}
    (see `jaxselfeval.evaluate.chunks.encode`). Logs the seconds each part took."""

    recs: dict[str, list] = {}
    sweeps: dict = {"bon": {}, **{f"prune{sfx}": {} for sfx in _suffixes()}}
    traces: dict = {}  # adaptive sampling's traces, {kind: {field: [G, R]}}
    took: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        took[name] = now - clock[0]
        clock[0] = now

    pool = S.sample_pool(run, ch, n=cfg.n, temperature=cfg.temperature, probe_at=cfg.prune_at,
                         offset=s)
    lap("pool")
    names = list(EVAL_POOLED)
    if rm is not None:
        S.add_rm_scores(pool, rm)
        names.append("bon_rm")
        lap("reward model")
    for name in names:
        recs[name] = S.pool_records(pool, ch, name, probe_len=run.probe_len)
    for k in (1, 2, 4, 8, 16):
        if k <= cfg.n:
            sweeps["bon"][k] = S.pool_records(pool, ch, "bon_self", n=k, probe_len=run.probe_len)
    lap("pool strategies")
    recs["greedy"], greedy = _greedy(run, ch, s)
    lap("greedy")
    real = cfg.real_runs == "all" or (s == 0 and cfg.real_runs == "first")
    agree: dict[str, int] = {}  # prompts where the real run equals its reading off the pool
    acfg, both = cfg.adaptive_configs()
    for signal in SIGNALS:  # the token, and the free signals it must beat, on the same samples
        sfx = _suffix(signal)
        drv = PoolDriver(pool, ch, greedy, temperature=cfg.temperature, probe_len=run.probe_len,
                         signal=signal)
        for t in cfg.prune_at:
            for f in cfg.keep_fractions:  # (`pc` stays the timed setting)
                sweeps["prune" + sfx][f"{t}:{f}"] = A.prune(
                    drv, PruneConfig(cfg.n, t, f, cfg.temperature))
        # adaptive sampling for every signal; its pruned rounds for the token (the timed setting)
        for name, kind, c in ((("adaptive", "threshold", acfg),
                               ("adaptive_pruned", "threshold_pruned", both))
                              [:2 if signal == "self" else 1]):
            # the trace read off the pool and the greedy run when the rounds draw the pool's
            # candidates (else run for every prompt); the threshold sweeps are read off it
            read_off = drv.replays(c)
            _, rounds = A.adaptive(drv if read_off else LiveDriver(run, ch, signal=signal,
                                                                   offset=s), c, trace=True)
            traces[kind + sfx] = A.stack_trace(rounds)  # swept once every chunk is in
            if signal != "self":
                continue
            at = A.threshold_sweep(rounds, ch, [c.threshold])[float(c.threshold)]
            if real or not read_off:
                recs[name] = A.adaptive(LiveDriver(run, ch, offset=s), c)
                if read_off:
                    agree[name] = _agreement(name, s, recs[name], at)
            else:
                recs[name] = at
    lap("adaptive runs" if real else "adaptive, read off the pool")
    wall = {"adaptive": sum(r.wall_s for r in recs["adaptive"]),
            "adaptive_pruned": sum(r.wall_s for r in recs["adaptive_pruned"])}
    read = sweeps["prune"][f"{pc.at_tokens}:{pc.keep_fraction}"]
    if real:
        recs["pruned_run"] = A.prune(LiveDriver(run, ch, offset=s), pc)
        agree["pruned_run"] = _agreement("pruned_run", s, recs["pruned_run"], read)
    else:
        recs["pruned_run"] = read
    timed = s == 0 and cfg.real_runs != "none"
    if timed:  # side by side on the first chunk, both paths compiled already (the pool's
        # programs are Best-of-n's; the pruned run above compiled its own): full vs pruned
        wall["bon_full"] = S.full_run_wall(run, ch, cfg.n, cfg.temperature, offset=s)
        wall["pruned"] = sum(r.wall_s for r in A.prune(LiveDriver(run, ch, offset=s), pc))
        wall["timed_problems"] = len(ch)
    if real:  # counts (summed over chunks like the times): how far the reading off is checked
        wall["real_problems"] = len(ch)
        wall.update({f"agree_{k}": v for k, v in agree.items()})
    lap(("pruned run" if real else "pruned, read off the pool")
        + (", timed against Best-of-n" if timed else ""))
    log.info("chunk at %d: %s", s, ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
    pooled = {k: pool[k] for k in ("correct", "strict", "score", "likelihood", "length", "kind")}
    pooled["answer_group"] = answer_groups(pool["answers"])
    pooled.update({f"score_at{t}": pool["score_at"][t] for t in cfg.prune_at})
    pooled.update({f"likelihood_at{t}": pool["likelihood_at"][t] for t in cfg.prune_at})
    pooled.update({f"trace:{kind}:{f}": v for kind, tr in traces.items() for f, v in tr.items()})
    return {"recs": recs, "sweeps": sweeps, "wall": wall, "pooled": pooled}


def answer_groups(answers) -> np.ndarray:
    """[P][n] answers (None: none read) -> [P, n] int: the index of the first of a prompt's
    candidates that gave the same answer (-1: no answer), so votes can be recounted from a
    chunk."""
    return np.array([[-1 if a is None else row.index(a) for a in row] for row in answers],
                    dtype=np.int64).reshape(len(answers), -1)


def _suffix(signal: str) -> str:
    """The sweeps of `signal` are named kind + this ("threshold", "threshold_likelihood")."""
    return "" if signal == "self" else f"_{signal}"


def _suffixes() -> list[str]:
    return [_suffix(sig) for sig in SIGNALS]


def _agreement(name: str, s: int, real, read) -> int:
    """How many prompts (logged) a real run and the same strategy read off the pool agree on (the
    answer's correctness and the samples drawn): all of them unless a float difference between
    batch shapes flipped a sampled token."""
    same = sum(a.correct == b.correct and a.samples == b.samples for a, b in zip(real, read))
    log.info("chunk at %d: %s run for real and read off the pool agree on %d of %d prompts", s,
             name, same, len(real))
    return same


def _summarize(part: dict, cfg: EvalConfig, kinds=(), target: str = "capability") -> dict:
    """Merged chunks -> results.json's content (aggregates, sweeps, headline, pool statistics;
    `kinds`: the task's names of the ways a response can go; `target`: the token's)."""
    summary = {k: aggregate(v) for k, v in part["recs"].items()}
    sw = {kind: {k: aggregate(v) for k, v in d.items()} for kind, d in part["sweeps"].items()}
    p = part["pooled"]
    for kind in sorted({k.split(":")[1] for k in p if k.startswith("trace:")}):
        tr = {f: p[f"trace:{kind}:{f}"] for f in A.TRACE_FIELDS}
        sw[kind] = A.trace_sweep(tr, A.sweep_thresholds(tr, cfg.thresholds))
    head = _headline(summary, sw, part["wall"], cfg)
    if "trace:threshold:ok" in p:
        head.update(_bound(p["trace:threshold:ok"][:, 0], p["correct"], cfg, head))
    return {"config": dataclasses.asdict(cfg), "summary": summary, "sweeps": sw,
            "wall_s": part["wall"], "headline": head,
            "pool": pool_stats(p["correct"], p["score"], p["likelihood"], length=p["length"],
                               score_at={t: p[f"score_at{t}"] for t in cfg.prune_at},
                               likelihood_at={t: p[f"likelihood_at{t}"] for t in cfg.prune_at},
                               strict=p.get("strict"), kind=p.get("kind"), kinds=kinds,
                               target=target)}


def _bound(first_ok, correct, cfg: EvalConfig, head: dict) -> dict:
    """What no signal can beat at <= 1.2 mean samples (`adaptive_bound`), and its share of
    Best-of-n's gain over the better of greedy and one sample."""
    G, r0 = len(first_ok), cfg.rounds[0]
    bound = adaptive_bound(first_ok, correct, int(np.floor((ADAPTIVE_BUDGET - r0) * G + 1e-9)),
                           sum(cfg.rounds[1:]))
    base = max(head["one_sample"], head["greedy"])
    return {"adaptive_bound_at_1.2": bound,
            "adaptive_bound_share": gain_recovered(bound, base, head["bon_self"])}


def _greedy(run, ch, offset):
    """Greedy decoding of a chunk -> (records, {"score", "likelihood", "correct", "length"} [G]:
    the final probe score and mean token log-probability too, for `PoolDriver`)."""
    P = run.prompts(ch, offset)
    C = run.eng.decode(P, run.branch(P, 1, 0.0))
    score = np.asarray(run.eng.probe(P, C, run.spec))
    outs = Engine.outputs(C)
    ok = np.array([run.correct(e, outs[i]) for i, e in enumerate(ch)])
    recs = [PromptRecord(e.id, float(ok[i]), 1, len(outs[i]), difficulty=e.difficulty)
            for i, e in enumerate(ch)]
    return recs, {"score": score, "likelihood": Engine.mean_logprob(C), "correct": ok,
                  "length": np.array([len(o) for o in outs])}


def signal_table(summary, sw, cfg) -> dict:
    """Strategy by strategy, each signal's accuracy on the same samples: {"bon": {signal: acc},
    "adaptive": {signal: {accuracy, mean_samples, threshold}} (the best at <= 1.2 mean samples),
    "prune@t": {signal: accuracy} at each prune point, keeping the smallest fraction}. Majority
    vote stands beside the signals in "bon"."""
    out: dict = {"bon": {sig: summary[f"bon_{sig}"]["accuracy"] for sig in SIGNALS
                         if f"bon_{sig}" in summary}}
    out["bon"]["majority"] = summary["majority"]["accuracy"]
    # each distinct answer's summed signal, against the plain count (majority)
    out["vote"] = {sig: summary[f"vote_{sig}"]["accuracy"] for sig in SIGNALS
                   if f"vote_{sig}" in summary}
    if out["vote"]:
        out["vote"]["majority"] = summary["majority"]["accuracy"]
    out["problems"] = summary["one"].get("n")  # for the report's noise margin
    out["adaptive"] = {}
    for sig in SIGNALS:
        th, a = best_within(sw.get("threshold" + _suffix(sig), {}))
        if a is not None:
            out["adaptive"][sig] = {"accuracy": a["accuracy"], "mean_samples": a["mean_samples"],
                                    "threshold": th}
    f = min(cfg.keep_fractions)
    for t in cfg.prune_at:
        out[f"prune@{t}"] = {sig: sw["prune" + _suffix(sig)][f"{t}:{f}"]["accuracy"]
                             for sig in SIGNALS if f"{t}:{f}" in sw.get("prune" + _suffix(sig), {})}
    return out


def _headline(summary, sw, wall, cfg) -> dict:
    one, bon = summary["one"]["accuracy"], summary["bon_self"]["accuracy"]
    greedy = summary["greedy"]["accuracy"]
    # adaptive: best accuracy among thresholds with <= 1.2 mean samples
    th, a = best_within(sw["threshold"])
    t0 = min(cfg.prune_at)
    pr = sw["prune"][f"{t0}:{min(cfg.keep_fractions)}"]
    return {
        "one_sample": one, "bon_self": bon, "majority": summary["majority"]["accuracy"],
        "oracle": summary["oracle"]["accuracy"], "greedy": summary["greedy"]["accuracy"],
        "bon_rm": summary["bon_rm"]["accuracy"] if "bon_rm" in summary else None,
        "bon_likelihood": summary["bon_likelihood"]["accuracy"] if "bon_likelihood" in summary else None,
        "bon_combined": summary["bon_combined"]["accuracy"] if "bon_combined" in summary else None,
        "adaptive_threshold_at_1.2": th,
        "adaptive_acc_at_1.2": a["accuracy"] if a else None,
        "adaptive_mean_samples": a["mean_samples"] if a else None,
        "adaptive_gain_recovered": (gain_recovered(a["accuracy"], max(one, greedy), bon)
                                    if a else None),
        # the share actually pruned: keep rounds to whole candidates (n=2 at 0.125 keeps 1 of 2)
        "prune_fraction_pruned": 1 - PruneConfig(cfg.n, t0, min(cfg.keep_fractions)).keep / cfg.n,
        "prune_at": t0,
        "prune_acc": pr["accuracy"], "prune_acc_loss_points": 100 * (bon - pr["accuracy"]),
        "prune_wall_speedup": (wall["bon_full"] / max(wall["pruned"], 1e-9)
                               if "bon_full" in wall else None),  # None: nothing timed
        **({"adaptive_pruned_acc": summary["adaptive_pruned"]["accuracy"],
            "adaptive_pruned_mean_samples": summary["adaptive_pruned"]["mean_samples"],
            "adaptive_pruned_tokens_vs_adaptive": summary["adaptive_pruned"]["mean_tokens"]
            / max(summary["adaptive"]["mean_tokens"], 1e-9)}
           if "adaptive_pruned" in summary else {}),
        "signals": signal_table(summary, sw, cfg),
    }
