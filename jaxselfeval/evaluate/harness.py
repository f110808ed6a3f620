"""The evaluation harness: every strategy on a task split, sweeps, JSON + Markdown + PNG plots."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from jaxselfeval.evaluate.records import aggregate, gain_recovered
from jaxselfeval.strategies.config import AdaptiveConfig, PruneConfig, check_threshold

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalConfig:
    task: str = "arithmetic"
    split: str = "test"
    limit: int = 300
    n: int = 16
    temperature: float = 1.0
    max_new_tokens: int = 96
    batch_prompts: int = 100
    rounds: tuple = (1, 1, 2, 4, 8)
    round_temperatures: tuple = (0.0, 0.7, 1.0, 1.0, 1.0)
    threshold: float = 0.8
    thresholds: tuple = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
    prune_at: tuple = (8, 16)
    keep_fractions: tuple = (0.125, 0.25, 0.5)
    seed: int = 0

    def validate(self):
        check_threshold(self.threshold)
        for t in self.thresholds:
            check_threshold(t)
        AdaptiveConfig(self.rounds, self.threshold, self.round_temperatures, self.n)
        for f in self.keep_fractions:
            PruneConfig(self.n, min(self.prune_at), f)


def evaluate(model, tokenizer, task, cfg: EvalConfig, out_dir, *, progress=True, rm=None) -> dict:
    """Run every strategy on `cfg.limit` problems; write results.json, report.md and plots.
    `rm`: an external reward model (`RewardModel`) for the Best-of-N-by-RM baseline."""
    from tqdm import tqdm

    from jaxselfeval.strategies import run as S

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exs = task.examples(cfg.split)[:cfg.limit]
    run = S.Runner(model, tokenizer, task, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens)
    acfg = AdaptiveConfig(cfg.rounds, cfg.threshold, cfg.round_temperatures, cfg.n)
    recs: dict[str, list] = {}
    sweeps: dict = {"threshold": {}, "prune": {}, "bon": {}}
    wall = {"bon_full": 0.0, "pruned": 0.0, "adaptive": 0.0}
    pooled: dict[str, list] = {}  # every pooled candidate's correctness and final score [P, n]
    chunks = range(0, len(exs), cfg.batch_prompts)
    pc = PruneConfig(cfg.n, min(cfg.prune_at), min(cfg.keep_fractions), cfg.temperature)
    # compile both timed paths once so the side-by-side wall times exclude compilation
    S.full_run_wall(run, exs[:cfg.batch_prompts], cfg.n, cfg.temperature)
    S.prune_run(run, exs[:cfg.batch_prompts], pc)
    for s in tqdm(chunks, desc="evaluating", disable=not progress):
        ch = exs[s:s + cfg.batch_prompts]
        pool = S.sample_pool(run, ch, n=cfg.n, temperature=cfg.temperature, probe_at=cfg.prune_at,
                             offset=s)
        S.add_likelihood_scores(pool, model)
        names = ["one", "bon_self", "bon_likelihood", "majority", "oracle"]
        if rm is not None:
            S.add_rm_scores(pool, rm)
            names.append("bon_rm")
        for name in names:
            recs.setdefault(name, []).extend(S.pool_records(pool, ch, name, probe_len=run.probe_len))
        for key in ("correct", "score", "likelihood"):
            pooled.setdefault(key, []).append(pool[key])
        for k in (1, 2, 4, 8, 16):
            if k <= cfg.n:
                sweeps["bon"].setdefault(k, []).extend(
                    S.pool_records(pool, ch, "bon_self", n=k, probe_len=run.probe_len))
        for t in cfg.prune_at:
            for f in cfg.keep_fractions:
                sc = PruneConfig(cfg.n, t, f, cfg.temperature)  # `pc` stays the timed setting
                sweeps["prune"].setdefault(f"{t}:{f}", []).extend(
                    S.prune_records(pool, ch, sc, run.probe_len))
        recs.setdefault("greedy", []).extend(_greedy(run, ch, s))
        ar = S.adaptive(run, ch, acfg, offset=s)
        recs.setdefault("adaptive", []).extend(ar)
        wall["adaptive"] += sum(r.wall_s for r in ar)
        _, rounds = S.adaptive(run, ch, acfg, offset=s, trace=True)
        for th, rr in S.threshold_sweep(rounds, ch, cfg.thresholds).items():
            sweeps["threshold"].setdefault(th, []).extend(rr)
        # side by side: Best-of-n decoded fully vs pruned at the earliest point
        wall["bon_full"] += S.full_run_wall(run, ch, cfg.n, cfg.temperature, offset=s)
        pr, w = S.prune_run(run, ch, pc, offset=s)
        wall["pruned"] += w
        recs.setdefault("pruned_run", []).extend(pr)
    summary = {k: aggregate(v) for k, v in recs.items()}
    sw = {"threshold": {th: aggregate(v) for th, v in sweeps["threshold"].items()},
          "prune": {k: aggregate(v) for k, v in sweeps["prune"].items()},
          "bon": {k: aggregate(v) for k, v in sweeps["bon"].items()}}
    result = {"config": dataclasses.asdict(cfg), "summary": summary, "sweeps": sw, "wall_s": wall,
              "headline": _headline(summary, sw, wall, cfg),
              "pool": pool_stats(np.concatenate(pooled["correct"]), np.concatenate(pooled["score"]),
                                 np.concatenate(pooled["likelihood"]))}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    from jaxselfeval.evaluate.report import plots, write_report

    plots(result, out)
    write_report(result, out)
    return result


def pool_stats(correct, score, likelihood=None) -> dict:
    """Of the pooled samples (correct, score, likelihood: [P, n]): sample@1 (mean correctness of
    all samples, the policy's accuracy), and how the final self-evaluation score (and the policy's
    own mean token log-probability) separates right from wrong, pooled over prompts and within
    each prompt (what Best-of-N uses)."""
    from jaxselfeval.selfeval import metrics as M

    groups = np.repeat(np.arange(correct.shape[0]), correct.shape[1])
    return {"sample_at_1": float(correct.mean()), "samples": int(correct.size),
            "auroc": M.auroc(score.ravel(), correct.ravel()),
            "auroc_within": M.auroc_within(score.ravel(), correct.ravel(), groups),
            **({} if likelihood is None else {
                "likelihood_auroc": M.auroc(likelihood.ravel(), correct.ravel()),
                "likelihood_auroc_within": M.auroc_within(likelihood.ravel(), correct.ravel(),
                                                          groups)})}


def _greedy(run, ch, offset):
    from jaxselfeval.evaluate.records import PromptRecord
    from jaxselfeval.sample import Engine

    P = run.prompts(ch, offset)
    C = run.eng.decode(P, run.eng.branch(P, 1, run.max_new, temperature=0.0))
    outs = Engine.outputs(C)
    return [PromptRecord(e.id, run.correct(e, outs[i]), 1, len(outs[i]), difficulty=e.difficulty)
            for i, e in enumerate(ch)]


def _headline(summary, sw, wall, cfg) -> dict:
    one, bon = summary["one"]["accuracy"], summary["bon_self"]["accuracy"]
    # adaptive: best accuracy among thresholds with <= 1.2 mean samples
    cheap = [(th, a) for th, a in sw["threshold"].items() if a["mean_samples"] <= 1.2]
    th, a = max(cheap, key=lambda x: x[1]["accuracy"]) if cheap else (None, None)
    t0 = min(cfg.prune_at)
    pr = sw["prune"][f"{t0}:{min(cfg.keep_fractions)}"]
    return {
        "one_sample": one, "bon16_self": bon, "majority": summary["majority"]["accuracy"],
        "oracle": summary["oracle"]["accuracy"], "greedy": summary["greedy"]["accuracy"],
        "bon16_rm": summary["bon_rm"]["accuracy"] if "bon_rm" in summary else None,
        "bon16_likelihood": summary["bon_likelihood"]["accuracy"] if "bon_likelihood" in summary else None,
        "adaptive_threshold_at_1.2": th,
        "adaptive_acc_at_1.2": a["accuracy"] if a else None,
        "adaptive_mean_samples": a["mean_samples"] if a else None,
        "adaptive_gain_recovered": gain_recovered(a["accuracy"], one, bon) if a else None,
        "prune_fraction_pruned": 1 - min(cfg.keep_fractions), "prune_at": t0,
        "prune_acc": pr["accuracy"], "prune_acc_loss_points": 100 * (bon - pr["accuracy"]),
        "prune_wall_speedup": wall["bon_full"] / max(wall["pruned"], 1e-9),
    }

