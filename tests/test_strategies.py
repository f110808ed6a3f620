"""Strategies on a tiny random model: stopping rule, round sizes, temperatures, pruning keeps the
highest scores, compaction keeps prompt order, exact sweeps, harness counting, bad input."""

import dataclasses
import json
import logging

import numpy as np
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.evaluate.harness import pool_stats
from jaxselfeval.evaluate.records import PromptRecord, aggregate, gain_recovered
from jaxselfeval.sample import Engine
from jaxselfeval.selfeval.metrics import auroc
from jaxselfeval.strategies import (AdaptiveConfig, LiveDriver, PoolDriver, PruneConfig, Runner,
                                    adaptive, pool_records, prune, threshold_sweep)
from jaxselfeval.strategies import run as S
from jaxselfeval.strategies.driver import combined_score
from jaxselfeval.tasks import get_task
from jaxselfeval.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def setup():
    task = get_task("arithmetic", n_train=300, n_validation=10, n_test=10)
    tok = build_tokenizer([e.question + "\n" + e.solution for e in task.examples("train")], 300)
    cfg = jse.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, eos_token_id=tok.eos_token_id)
    model = jse.create_model(cfg, seed=1)
    return Runner(model, tok, task, seed=0, max_new_tokens=12), task.examples("test")[:5]


def test_adaptive_stopping_rule_and_round_sizes(setup):
    run, exs = setup
    cfg = AdaptiveConfig(rounds=(1, 1, 2), threshold=0.0, temperatures=(0.0, 0.7, 1.0), max_samples=4)
    recs = adaptive(LiveDriver(run, exs), cfg)
    assert [r.samples for r in recs] == [1] * 5  # every best score >= 0: stop after round 1
    never = AdaptiveConfig(rounds=(1, 1, 2), threshold=1.0, temperatures=(0.0, 0.7, 1.0), max_samples=4)
    recs = adaptive(LiveDriver(run, exs), never)
    assert [r.samples for r in recs] == [4] * 5
    assert all(r.probe_tokens == 4 * run.probe_len for r in recs)
    assert [r.prompt_id for r in recs] == [e.id for e in exs]  # prompt order kept


def test_threshold_sweep_equals_real_runs_with_compaction(setup):
    run, exs = setup
    cfg = AdaptiveConfig(rounds=(1, 1, 2), threshold=1.0, temperatures=(0.0, 0.7, 1.0), max_samples=4)
    _, rounds = adaptive(LiveDriver(run, exs), cfg, trace=True)
    scores = sorted({float(r["best"][g]) for r in rounds for g in range(len(exs))})
    k = len(scores) // 2  # some prompts stop early, others go on (compaction); the threshold
    th = (scores[k - 1] + scores[k]) / 2  # lies between two scores: batch shapes move a float
    assert scores[k] - scores[k - 1] > 1e-4  # in its 7th digit, never across the threshold
    real = adaptive(LiveDriver(run, exs), AdaptiveConfig((1, 1, 2), th, (0.0, 0.7, 1.0), 4))
    sim = threshold_sweep(rounds, exs, [th])[th]
    # the harness sweeps the stacked trace: the same aggregates as the records, every threshold
    from jaxselfeval.strategies.rounds import stack_trace, sweep_thresholds, trace_sweep

    trace = stack_trace(rounds)
    ths = sweep_thresholds(trace, (0.5,), levels=9)
    assert 0.5 in ths and len(ths) > 3
    for t, agg in trace_sweep(trace, ths).items():
        want = aggregate(threshold_sweep(rounds, exs, [t])[t])
        assert {k: agg[k] for k in want if k != "wall_s"} == pytest.approx(
            {k: want[k] for k in want if k != "wall_s"}), t
    # every threshold's outcome is one the sweep holds: its best at a budget is exact
    full = trace_sweep(trace, sweep_thresholds(trace))
    outcomes = {(a["accuracy"], a["mean_samples"]) for a in full.values()}
    for t in np.random.default_rng(0).random(50):
        a = trace_sweep(trace, [t])[float(t)]
        assert (a["accuracy"], a["mean_samples"]) in outcomes, t
    assert len({r.samples for r in real}) > 1
    for a, b in zip(real, sim):
        assert (a.prompt_id, a.samples, a.gen_tokens, a.correct) == (b.prompt_id, b.samples,
                                                                      b.gen_tokens, b.correct)
        assert a.chosen_score == pytest.approx(b.chosen_score, abs=1e-5)


def test_compaction_pads_rounds_to_few_batch_sizes(setup, monkeypatch):
    """Rounds run on the active prompts padded to a power of four (copies of the last, dropped),
    so the jitted decode sees few batch sizes; the records are those of the unpadded rounds
    (test_threshold_sweep_equals_real_runs_with_compaction)."""
    from jaxselfeval.strategies.driver import padded_rows

    assert padded_rows(np.array([3]), 100).tolist() == [3]
    assert padded_rows(np.array([0, 4, 7]), 100).tolist() == [0, 4, 7, 7]
    assert len(padded_rows(np.arange(37), 100)) == 64 and len(padded_rows(np.arange(70), 100)) == 100
    assert len(padded_rows(np.arange(5), 100)) == 16  # powers of four: few sizes recur
    run, exs = setup
    sizes, branch = [], run.eng.branch

    def spy(P, n, *a, **k):
        sizes.append(int(P.length.shape[0]))
        return branch(P, n, *a, **k)

    monkeypatch.setattr(run.eng, "branch", spy)
    cfg = AdaptiveConfig((1, 1, 2), 1.0, (0.0, 0.7, 1.0), 4)
    _, rounds = adaptive(LiveDriver(run, exs), cfg, trace=True)
    best = np.sort(rounds[0]["best"])  # 3 prompts go on after round 1: padded to 4 (the
    th = float(best[2] + best[3]) / 2  # threshold between two scores, far from both)
    assert best[3] - best[2] > 1e-4
    sizes.clear()
    real = adaptive(LiveDriver(run, exs), dataclasses.replace(cfg, threshold=th))
    assert sizes[:2] == [5, 4] and set(sizes) <= {1, 2, 4, 5}, sizes
    sim = threshold_sweep(rounds, exs, [th])[th]
    assert [(r.samples, r.gen_tokens, r.probe_tokens, r.correct) for r in real] == \
        [(r.samples, r.gen_tokens, r.probe_tokens, r.correct) for r in sim]
    assert [r.chosen_score for r in real] == pytest.approx([r.chosen_score for r in sim], abs=1e-5)


def test_per_row_temperature_first_round_greedy(setup):
    run, exs = setup
    P = run.prompts(exs)
    temps = np.tile([0.0, 1.0, 0.0], len(exs))
    C = Engine.outputs(run.eng.decode(P, run.eng.branch(P, 3, 12, temperature=temps)))
    G = Engine.outputs(run.eng.decode(P, run.eng.branch(P, 1, 12, temperature=0.0)))
    for g in range(len(exs)):
        assert C[3 * g] == G[g] and C[3 * g + 2] == G[g]


def test_adaptive_with_pruning_keeps_each_rounds_best_early_scores(setup):
    """Adaptive sampling and early pruning combined: a round of r candidates is probed after
    prune_at tokens and only its best keep(r) are decoded on; each survivor is the very candidate
    the unpruned round would have drawn (same keys), and every token is counted."""
    run, exs = setup
    G, at, pl = len(exs), 3, run.probe_len
    kw = dict(rounds=(1, 1, 4), threshold=1.0, temperatures=(0.0, 0.7, 1.0), max_samples=6)
    plain = adaptive(LiveDriver(run, exs), AdaptiveConfig(**kw))
    # keeping every candidate is plain adaptive sampling, record for record
    same = adaptive(LiveDriver(run, exs), AdaptiveConfig(**kw, prune_at=at, keep_fraction=1.0))
    def fields(recs):  # everything but the wall time
        return [dataclasses.replace(r, wall_s=0.0) for r in recs]

    assert fields(same) == fields(plain)
    cfg = AdaptiveConfig(**kw, prune_at=at, keep_fraction=0.5)
    assert [cfg.keep(r) for r in cfg.rounds] == [1, 1, 2]
    recs = adaptive(LiveDriver(run, exs), cfg)
    # the expectation, built from unpruned rounds with the same candidate keys
    P = run.prompts(exs)
    full, early = [], None
    for k, (r, temp, off) in enumerate(zip((1, 1, 4), (0.0, 0.7, 1.0), (0, 1, 2))):
        C = run.eng.branch(P, r, run.max_new, temperature=temp, cand_offset=off)
        if r == 4:
            Ce = run.eng.decode(P, C, until=at)
            early = np.asarray(run.eng.probe(P, Ce, run.spec)).reshape(G, 4)
            early_len = np.asarray(Ce.length).reshape(G, 4)
            C = run.eng.branch(P, r, run.max_new, temperature=temp, cand_offset=off)
        C = run.eng.decode(P, C)
        full.append((Engine.outputs(C), np.asarray(run.eng.probe(P, C, run.spec)).reshape(G, r)))
    for g, rec in enumerate(recs):
        kept = np.sort(np.argsort(-early[g], kind="stable")[:2])
        outs = [full[0][0][g], full[1][0][g]] + [full[2][0][g * 4 + j] for j in kept]
        sc = [full[0][1][g, 0], full[1][1][g, 0]] + [full[2][1][g, j] for j in kept]
        dropped = [j for j in range(4) if j not in kept]
        assert rec.samples == 6 and rec.probe_tokens == (1 + 1 + 4 + 2) * pl
        assert rec.gen_tokens == sum(map(len, outs)) + sum(early_len[g, j] for j in dropped)
        assert rec.chosen_score == pytest.approx(max(sc), abs=1e-5)
        assert rec.output == outs[int(np.argmax(sc))]
    assert sum(r.gen_tokens for r in recs) < sum(r.gen_tokens for r in plain)
    # its threshold sweep (every round traced, then cut) equals real runs that stop and compact
    _, rounds = adaptive(LiveDriver(run, exs), cfg, trace=True)
    th = float(np.sort(rounds[0]["best"])[2]) + 1e-6
    real = adaptive(LiveDriver(run, exs), dataclasses.replace(cfg, threshold=th))
    sim = threshold_sweep(rounds, exs, [th])[th]
    assert [(r.samples, r.gen_tokens, r.probe_tokens, r.correct) for r in real] == \
        [(r.samples, r.gen_tokens, r.probe_tokens, r.correct) for r in sim]
    assert len({r.samples for r in real}) > 1
    with pytest.raises(jse.JSEError, match="keep_fraction must be in"):
        AdaptiveConfig(**kw, prune_at=at, keep_fraction=0.0)
    with pytest.raises(jse.JSEError, match="prune_at must be >= 1"):
        AdaptiveConfig(**kw, prune_at=0, keep_fraction=0.5)


def _pool():
    # 2 prompts x 4 candidates, hand-made
    return {"n": 4, "correct": np.array([[0, 1, 0, 1], [0, 0, 0, 1]], float),
            "score": np.array([[0.9, 0.2, 0.1, 0.8], [0.1, 0.3, 0.2, 0.4]]),
            "score_at": {4: np.array([[0.1, 0.9, 0.2, 0.3], [0.5, 0.4, 0.3, 0.9]])},
            "length": np.array([[10, 6, 8, 4], [3, 10, 10, 10]]),
            "answers": [["1", "2", "1", "2"], [None, "5", "5", "7"]]}


class _E:
    def __init__(self, i, ans):
        self.id, self.answer, self.difficulty = f"t{i}", ans, 1


def test_pool_strategies_and_counting():
    pool, exs = _pool(), [_E(0, "2"), _E(1, "7")]
    one = pool_records(pool, exs, "one", probe_len=5)
    assert [r.correct for r in one] == [0, 0] and [r.tokens for r in one] == [10, 3]
    bon = pool_records(pool, exs, "bon_self", probe_len=5)
    assert [r.correct for r in bon] == [0, 1]  # highest scores: cand 0 (wrong), cand 3 (right)
    assert [r.tokens for r in bon] == [28 + 20, 33 + 20]
    maj = pool_records(pool, exs, "majority")
    assert [r.correct for r in maj] == [0, 0]  # tie 1/2 -> first seen ("1"); "5" beats "7"
    assert [r.correct for r in pool_records(pool, exs, "oracle")] == [1, 1]
    pool["likelihood"] = np.array([[-0.5, -0.1, -0.2, -0.3], [-0.1, -0.9, -0.2, -0.3]])
    lik = pool_records(pool, exs, "bon_likelihood", probe_len=5)
    assert [r.correct for r in lik] == [1, 0] and [r.probe_tokens for r in lik] == [0, 0]
    # log score + likelihood: cand 3 in both prompts (-0.52 and -1.22), where the score alone
    # picks a wrong answer in prompt 0 and the likelihood alone one in prompt 1
    both = pool_records(pool, exs, "bon_combined", probe_len=5)
    assert [r.correct for r in both] == [1, 1] and [r.probe_tokens for r in both] == [20, 20]
    stats = pool_stats(pool["correct"], pool["score"], pool["likelihood"])
    assert stats["combined_auroc"] == pytest.approx(
        auroc(combined_score(pool["score"], pool["likelihood"]).ravel(), pool["correct"].ravel()))
    agg = aggregate(bon)
    assert agg["accuracy"] == 0.5 and agg["mean_samples"] == 4 and agg["mean_tokens"] == 50.5
    assert gain_recovered(0.6, 0.5, 0.7) == pytest.approx(0.5)
    # each record carries the chosen candidate's tokens
    pool["outs"] = [[g, j] for g in range(2) for j in range(4)]
    chosen = {"one": [0, 0], "bon_self": [0, 3], "majority": [0, 1], "oracle": [1, 3],
              "bon_likelihood": [1, 0]}
    for name, js in chosen.items():
        assert [r.output for r in pool_records(pool, exs, name)] == [[0, js[0]], [1, js[1]]], name


def test_pruning_keeps_the_highest_early_scores():
    pool, exs = _pool(), [_E(0, "2"), _E(1, "7")]
    recs = prune(PoolDriver(pool, exs, temperature=1.0, probe_len=5), PruneConfig(n=4, at_tokens=4, keep_fraction=0.25))
    # prompt 0 keeps cand 1 (0.9 at 4 tokens) -> correct; prompt 1 keeps cand 3 -> correct
    assert [r.correct for r in recs] == [1, 1]
    # tokens: everyone decodes min(len, 4), the survivor the rest
    assert recs[0].gen_tokens == (4 + 4 + 4 + 4) + (6 - 4)
    assert recs[1].gen_tokens == (3 + 4 + 4 + 4) + (10 - 4)
    two = prune(PoolDriver(pool, exs, temperature=1.0, probe_len=5), PruneConfig(n=4, at_tokens=4, keep_fraction=0.5))
    # prompt 0 keeps cands 1, 3 (0.9, 0.3); the best final score among them is cand 3 (0.8)
    assert [r.chosen_score for r in two] == [0.8, 0.4]


@pytest.mark.parametrize("kw,msg", [
    (dict(threshold=1.5), "threshold must be in \\[0, 1\\]"),
    (dict(threshold=-0.1), "threshold must be in \\[0, 1\\]"),
    (dict(rounds=(1, 2, 4, 8, 16)), "more than max_samples=16"),
    (dict(rounds=(1, 0)), "round sizes must be >= 1"),
])
def test_bad_strategy_config(kw, msg):
    args = dict(rounds=(1, 1, 2, 4, 8), threshold=0.9, temperatures=1.0, max_samples=16)
    args.update(kw)
    with pytest.raises(jse.JSEError, match=msg):
        AdaptiveConfig(**args)
    with pytest.raises(jse.JSEError, match="keep_fraction"):
        PruneConfig(keep_fraction=0.0)


def test_untrained_model_warns(tmp_path, caplog):
    from jaxselfeval.commands.evaluate import check_selfeval_trained

    with caplog.at_level(logging.WARNING):
        assert not check_selfeval_trained(tmp_path)
    assert "never self-eval-trained" in caplog.text and "meaningless" in caplog.text
    (tmp_path / "selfeval.json").write_text("{}")
    assert check_selfeval_trained(tmp_path)


def test_record_tokens_include_probes():
    r = PromptRecord("x", 1.0, 2, 30, 10)
    assert r.tokens == 40


def test_harness_times_the_headline_pruning_setting(setup, tmp_path):
    """The real (timed) pruned run is the earliest prune point with the smallest keep fraction,
    and equals that setting's entry of the exact prune sweep computed from the pool."""
    from flax import nnx

    from jaxselfeval.evaluate.harness import EvalConfig, evaluate

    run, _ = setup
    cfg = EvalConfig(limit=5, n=4, batch_prompts=5, max_new_tokens=12, rounds=(1, 1, 2),
                     round_temperatures=(0.0, 0.7, 1.0), thresholds=(0.5,), prune_at=(2, 4),
                     keep_fractions=(0.25, 0.5))
    model = nnx.merge(run.eng.graphdef, run.eng.state)
    res = evaluate(model, run.tok, run.task, cfg, tmp_path, progress=False)
    real, swept = res["summary"]["pruned_run"], res["sweeps"]["prune"]["2:0.25"]
    for k in ("accuracy", "mean_gen_tokens", "mean_probe_tokens", "mean_samples"):
        assert real[k] == swept[k], k
    assert res["pool"]["samples"] == 5 * 4 and 0 <= res["pool"]["sample_at_1"] <= 1
    # the chunk keeps each candidate's answer group, so votes can be recounted from it
    groups = np.asarray(json.loads((tmp_path / "chunks" / "chunk-000000.json").read_text())
                        ["pooled"]["answer_group"])
    assert groups.shape == (5, 4) and groups.min() >= -1
    for row in groups:
        for j, gj in enumerate(row):
            assert gj == -1 or (gj <= j and row[gj] == gj)
    report = (tmp_path / "report.md").read_text()
    assert "## Goals" in report and "by the policy's own likelihood" in report
    both = res["summary"]["adaptive_pruned"]  # adaptive rounds pruned at 2 tokens, keep 0.25
    assert both["n"] == 5 and 1 <= both["mean_samples"] <= 4
    assert "adaptive + pruning (threshold 0.8, rounds pruned at 2 tokens, keep 0.25)" in report
    assert res["headline"]["adaptive_pruned_acc"] == both["accuracy"]
    # the oracle bound at 1.2 samples: 5 prompts, one extra sample, on the greedy first round
    from jaxselfeval.evaluate.stats import adaptive_bound

    pooled = json.loads((tmp_path / "chunks" / "chunk-000000.json").read_text())["pooled"]
    first = np.asarray(pooled["trace:threshold:ok"])[:, 0]
    assert first.mean() == res["summary"]["greedy"]["accuracy"]
    assert res["headline"]["adaptive_bound_at_1.2"] == pytest.approx(
        adaptive_bound(first, np.asarray(pooled["correct"]), 1, 3))
    swept_at = {float(k) for k in res["sweeps"]["threshold_pruned"]}
    assert 0.5 in swept_at and len(swept_at) > 1  # the configured one and the signal's quantiles
    assert "## Threshold sweep: adaptive sampling by the token, rounds pruned at 2 tokens " \
           "(keep 0.25)" in report
    lik = res["summary"]["bon_likelihood"]
    assert lik["mean_samples"] == 4 and lik["mean_probe_tokens"] == 0
    assert res["headline"]["bon_likelihood"] == lik["accuracy"]
    assert 0 <= res["pool"]["likelihood_auroc_within"] <= 1 or res["pool"]["likelihood_auroc_within"] != res["pool"]["likelihood_auroc_within"]
    # the free signals run every strategy the token runs, on the same samples, with no probe
    for kind in ("threshold_likelihood", "threshold_combined", "prune_likelihood",
                 "prune_combined"):
        assert res["sweeps"][kind], kind
    assert all(a["mean_probe_tokens"] == 0 for a in res["sweeps"]["prune_likelihood"].values())
    table = res["headline"]["signals"]
    assert set(table["bon"]) == {"self", "likelihood", "combined", "majority"}
    assert set(table["vote"]) == {"self", "likelihood", "combined", "majority"}
    assert table["vote"]["majority"] == res["summary"]["majority"]["accuracy"]
    assert "answer vote of" in report
    assert table["prune@2"]["self"] == swept["accuracy"]
    assert "## The token against the free signals (the same samples)" in report
    assert "pruning at 2 tokens" in report and "by log-prob: accuracy" in report


def test_verdict_reads_each_goal_from_the_headline():
    from jaxselfeval.evaluate.report import verdict

    h = {"one_sample": 0.70, "greedy": 0.85, "bon_self": 0.90, "majority": 0.75,
         "bon_rm": 0.78, "oracle": 0.95, "adaptive_acc_at_1.2": 0.89,
         "adaptive_mean_samples": 1.15, "adaptive_gain_recovered": gain_recovered(0.89, 0.85, 0.90),
         "prune_at": 8, "prune_fraction_pruned": 0.75, "prune_acc_loss_points": 0.5,
         "prune_wall_speedup": 2.5}
    pool = {"samples": 4800, "sample_at_1": 0.7, "auroc": 0.9, "auroc_within": 0.8,
            "auroc_at8": 0.8, "auroc_trunc8": 0.6, "running_at8": 0.7, "ece": 0.02}
    res = {"headline": h, "config": {"n": 16}, "pool": pool}
    text = "\n".join(verdict(res))
    assert "NOT met" not in text, text
    assert "recovering 80.0% of the Best-of-16 gain over greedy: 85.0% -> 90.0%" in text
    assert "AUROC 0.800 pooled (goal >= 0.75): met; over the 70% of samples still running" in text
    # the share is of the gain over the better of greedy and one sample
    h.update(greedy=0.60, adaptive_gain_recovered=gain_recovered(0.89, 0.70, 0.90))
    assert "recovering 95.0% of the Best-of-16 gain over one sample" in "\n".join(verdict(res))
    # Best-of-16 below greedy: its goal fails, and pruning close to it is no evidence
    h.update(greedy=0.95, adaptive_gain_recovered=gain_recovered(0.89, 0.95, 0.90))
    text = "\n".join(verdict(res))
    assert "and >= greedy: NOT met (90.0% vs one sample 70.0%, +20.0 points; greedy 95.0%, -5.0)" in text
    assert "no gain to recover; adaptive itself is -6.0 points over greedy" in text
    assert "Pruning >= 75% at 8 tokens within 1 point of Best-of-16 by self-evaluation and >= 2x " \
           "less wall time: NOT met" in text and "no evidence for the capability score" in text
    # a token at chance: no goal that rests on it is met, whatever the accuracies say
    h.update(greedy=0.60, adaptive_gain_recovered=gain_recovered(0.89, 0.70, 0.90))
    pool.update(auroc_within=0.52, ece=0.09)
    text = "\n".join(verdict(res))
    assert "- Best-of-16 by self-evaluation >= one sample + 10 points and >= greedy: NOT met" in text
    assert "at chance, within-prompt AUROC 0.520" in text
    assert "Calibration: ECE 0.090 against the capability targets (goal <= 0.05): NOT met" in text
    assert ": met" not in text.split("Calibration")[1].split("beats majority")[0]


def test_adaptive_bound_is_the_best_allocation_of_extra_samples():
    """The oracle bound equals the best of every way to give `extra` samples (at most `cap` a
    prompt) to the prompts whose first answer is wrong, found by brute force; a prompt answered
    right first gets none, and no extra sample leaves the first round's accuracy."""
    import itertools

    from jaxselfeval.evaluate.stats import adaptive_bound

    rng = np.random.default_rng(0)
    for _ in range(20):
        G, n, extra, cap = 4, 8, int(rng.integers(0, 6)), int(rng.integers(1, 4))
        correct = (rng.random((G, n)) < rng.random((G, 1))).astype(float)
        first = (rng.random(G) < 0.5).astype(float)
        p = correct.mean(1)
        best = 0.0
        for ks in itertools.product(range(cap + 1), repeat=G):
            if sum(ks) <= extra:
                best = max(best, sum(1.0 if first[g] else 1 - (1 - p[g]) ** ks[g]
                                     for g in range(G)) / G)
        assert adaptive_bound(first, correct, extra, cap) == pytest.approx(best)
    assert adaptive_bound([1, 0], np.ones((2, 4)), 0, 3) == 0.5
    # one sample on the wrong prompt with chance 1/2, a second one gains a quarter more
    assert adaptive_bound([1, 0], [[1, 1], [1, 0]], 2, 5) == pytest.approx((1 + 0.75) / 2)


def test_report_says_when_no_signal_can_reach_the_adaptive_goal():
    from jaxselfeval.evaluate.report import verdict

    h = {"one_sample": 0.45, "greedy": 0.545, "bon_self": 0.67, "majority": 0.55, "bon_rm": None,
         "oracle": 0.8, "adaptive_acc_at_1.2": 0.565, "adaptive_mean_samples": 1.15,
         "adaptive_gain_recovered": gain_recovered(0.565, 0.545, 0.67), "prune_at": 8,
         "prune_fraction_pruned": 0.75, "prune_acc_loss_points": 2.0, "prune_wall_speedup": None,
         "adaptive_bound_at_1.2": 0.602, "adaptive_bound_share": gain_recovered(0.602, 0.545, 0.67)}
    res = {"headline": h, "config": {"n": 16, "goals": {"gain_share": 0.5}}}
    text = "\n".join(verdict(res))
    assert "the most any signal could reach here, in expectation: 60.2%, 45.6% of the gain" in text
    assert "out of reach of any signal for this model at this budget" in text
    h.update({"adaptive_bound_at_1.2": 0.65,
              "adaptive_bound_share": gain_recovered(0.65, 0.545, 0.67)})
    text = "\n".join(verdict(res))
    assert "reach here, in expectation: 65.0%, 84.0% of the gain" in text
    assert "out of reach" not in text


def test_an_evaluations_goals_mark_its_report():
    """`goals` in the eval config replace the defaults: here a real model's (AUROC 0.75 / 0.60,
    Best-of-n + 5 points, pruning half at 16 tokens read off the sweep, no wall-time goal)."""
    from jaxselfeval.evaluate.report import verdict

    h = {"one_sample": 0.50, "greedy": 0.60, "bon_self": 0.66, "majority": 0.64, "bon_rm": None,
         "oracle": 0.9, "adaptive_acc_at_1.2": 0.64, "adaptive_mean_samples": 1.2,
         "adaptive_gain_recovered": gain_recovered(0.64, 0.60, 0.66), "prune_at": 8,
         "prune_fraction_pruned": 0.75, "prune_acc_loss_points": 9.0, "prune_wall_speedup": 1.2}
    pool = {"samples": 3200, "sample_at_1": 0.5, "auroc": 0.78, "auroc_within": 0.62,
            "auroc_at16": 0.72, "ece": 0.04}
    sweeps = {"prune": {"16:0.5": {"accuracy": 0.655}, "8:0.25": {"accuracy": 0.57}}}
    cfg = {"n": 16, "goals": {"auroc": 0.75, "auroc_within": 0.60, "auroc_at": 0.70,
                              "bon_margin": 0.05, "gain_share": 0.5, "prune_at": 16,
                              "prune_pruned": 0.5, "prune_speedup": 0}}
    text = "\n".join(verdict({"headline": h, "config": cfg, "pool": pool, "sweeps": sweeps}))
    assert "NOT met" not in text, text
    assert "Pruning >= 50% at 16 tokens within 1 point of Best-of-16 by self-evaluation: met " \
           "(50% pruned, accuracy -0.5 points" in text
    assert "AUROC 0.720 pooled (goal >= 0.7): met" in text
    text = "\n".join(verdict({"headline": h, "config": {"n": 16}, "pool": pool, "sweeps": sweeps}))
    assert "AUROC 0.780 pooled (goal >= 0.85), 0.620 within a prompt (goal >= 0.75): NOT met" in text
    from jaxselfeval.evaluate.report import adaptive_headline, goals_of

    h["adaptive_threshold_at_1.2"] = 0.5  # the headline states the evaluation's own goal too
    assert adaptive_headline(h, 16, goals_of(cfg)["gain_share"]).endswith(
        "(goal >= 50% of the gain).")
    assert adaptive_headline(h, 16, goals_of({})["gain_share"]).endswith(
        "(goal >= 74% of the gain, the paper's figure).")


def test_report_names_the_winner_of_each_strategy():
    """Strategy by strategy: the token (alone or combined) against the best free signal (the
    log-probability or majority vote), said plainly, ties included."""
    from jaxselfeval.evaluate.report import signal_lines, verdict

    h = {"one_sample": 0.5, "greedy": 0.6, "bon_self": 0.70, "majority": 0.68, "bon_rm": None,
         "oracle": 0.9, "adaptive_acc_at_1.2": 0.66, "adaptive_mean_samples": 1.2,
         "adaptive_gain_recovered": 0.6, "prune_at": 8, "prune_fraction_pruned": 0.75,
         "prune_acc_loss_points": 0.0, "prune_wall_speedup": 2.0,
         "signals": {"bon": {"self": 0.70, "likelihood": 0.72, "combined": 0.74, "majority": 0.68},
                     "adaptive": {"self": {"accuracy": 0.66, "mean_samples": 1.2, "threshold": 0.9},
                                  "likelihood": {"accuracy": 0.68, "mean_samples": 1.1,
                                                 "threshold": 0.95}},
                     "prune@8": {"self": 0.65, "likelihood": 0.65}}}
    res = {"headline": h, "config": {"n": 16}}
    text = "\n".join(verdict(res) + signal_lines(h, 16))
    assert "within noise" not in text
    h["signals"]["problems"] = 200  # +-6.2 points: a 2-point margin is noise there
    noisy = "\n".join(signal_lines(h, 16))
    assert "+2.0 points, within noise (+-6.2 points on 200 problems)" in noisy
    assert ("Best-of-16, the token against the best free signal: the token wins (token x "
            "log-probability): 74.0% vs 72.0%, +2.0 points") in text
    assert ("adaptive sampling, best at <= 1.2 mean samples, the token against the best free "
            "signal: the free signal wins (mean token log-probability): 66.0% vs 68.0%, -2.0 "
            "points") in text
    assert "pruning at 8 tokens (Best-of-16, keep the fewest), the token against the best free " \
           "signal: a tie" in text
    assert "| Best-of-16 | 70.0% | 74.0% | 72.0% | 68.0% | the token wins" in text
    # across Best-of-n and the answer votes: each side's best way of choosing one answer
    h["signals"]["vote"] = {"self": 0.71, "likelihood": 0.76, "combined": 0.73, "majority": 0.68}
    text = "\n".join(verdict(res))
    assert ("Choosing one of a prompt's 16 answers, the token's best way against the free "
            "signals' best way: the free signal wins (answer vote by mean token "
            "log-probability): 74.0% vs 76.0%, -2.0 points") in text
    assert "| answer vote of 16 (each distinct answer's summed signal) | 71.0% | 73.0% | " \
           "76.0% | 68.0% |" in "\n".join(signal_lines(h, 16))


def _comparable(res) -> str:
    """results.json without its wall times (everything else is deterministic), as JSON text so
    that nan (an AUROC with one class only) compares equal to nan."""
    drop = ("wall_s", "prune_wall_speedup")
    return json.dumps({k: ({s: {m: x for m, x in v.items() if m not in drop}
                            for s, v in res[k].items()} if k == "summary"
                           else {m: x for m, x in res[k].items() if m not in drop})
                       for k in ("summary", "headline", "pool")}, sort_keys=True)


def _without_wall(x):
    if isinstance(x, dict):
        return {k: _without_wall(v) for k, v in x.items() if k not in ("wall", "wall_s")}
    return [_without_wall(v) for v in x] if isinstance(x, list) else x


def _chunk_records(out_dir) -> list[str]:
    """Each saved chunk of an evaluation, wall times left out, as JSON text."""
    return [json.dumps(_without_wall(json.loads(p.read_text())), sort_keys=True)
            for p in sorted((out_dir / "chunks").glob("chunk-*.json"))]


def test_later_chunks_read_adaptive_and_pruning_off_their_pool(setup, tmp_path):
    """real_runs "first": adaptive sampling (plain and pruned) and the pruned run run for real on
    the first chunk only; later chunks read their records off the pool and the greedy run, and
    the results equal real runs on every chunk. The report says which, and the agreement."""
    from flax import nnx

    from jaxselfeval.evaluate.harness import EvalConfig, evaluate

    run, _ = setup
    cfg = EvalConfig(limit=6, n=4, batch_prompts=2, max_new_tokens=12, rounds=(1, 1, 2),
                     round_temperatures=(0.0, 1.0, 1.0), thresholds=(0.5,), prune_at=(4,),
                     keep_fractions=(0.25,), real_runs="all")
    model = nnx.merge(run.eng.graphdef, run.eng.state)
    every = evaluate(model, run.tok, run.task, cfg, tmp_path / "all", progress=False)
    first = evaluate(model, run.tok, run.task, dataclasses.replace(cfg, real_runs="first"),
                     tmp_path / "first", progress=False)
    for k in ("adaptive", "adaptive_pruned", "pruned_run"):
        for m in ("accuracy", "mean_samples", "mean_gen_tokens", "mean_probe_tokens"):
            assert first["summary"][k][m] == every["summary"][k][m], (k, m)
    assert every["summary"]["adaptive"]["mean_samples"] > 1  # later rounds were drawn
    assert (first["wall_s"]["real_problems"], every["wall_s"]["real_problems"]) == (2, 6)
    for k in ("adaptive", "adaptive_pruned", "pruned_run"):
        assert first["wall_s"][f"agree_{k}"] == 2 and every["wall_s"][f"agree_{k}"] == 6
    assert ("ran for real on 2 of the 6 problems (real_runs: first)" in
            (tmp_path / "first" / "report.md").read_text())
    assert "ran for real on" not in (tmp_path / "all" / "report.md").read_text()
    # "none": the same records, read off the pool everywhere; nothing timed
    none = evaluate(model, run.tok, run.task, dataclasses.replace(cfg, real_runs="none"),
                    tmp_path / "none", progress=False)
    for k in ("adaptive", "adaptive_pruned", "pruned_run"):
        assert none["summary"][k]["accuracy"] == every["summary"][k]["accuracy"], k
        assert none["summary"][k]["mean_samples"] == every["summary"][k]["mean_samples"], k
    assert "real_problems" not in none["wall_s"] and "bon_full" not in none["wall_s"]
    assert none["headline"]["prune_wall_speedup"] is None
    report = (tmp_path / "none" / "report.md").read_text()
    assert "real_runs: none" in report and "not timed" in report
    with pytest.raises(jse.JSEError, match="real_runs must be 'first', 'all' or 'none'"):
        dataclasses.replace(cfg, real_runs="some").validate()


def test_base_model_check_draws_the_pools_first_candidates(setup, tmp_path):
    """The demo's policy-damage check samples the base model with `sample_accuracy`; on the
    evaluated model itself it must draw the pool's first candidates under the same keys (a
    paired comparison): equal sample@1, up to a token flipped by a batch-shape float difference."""
    from jaxselfeval.evaluate.accuracy import sample_accuracy
    from jaxselfeval.evaluate.harness import EvalConfig, evaluate

    run, _ = setup
    cfg = EvalConfig(limit=6, n=4, batch_prompts=3, max_new_tokens=12, rounds=(1, 1, 2),
                     round_temperatures=(0.0, 1.0, 1.0), thresholds=(0.5,), prune_at=(4,),
                     keep_fractions=(0.25,), real_runs="none", temperature=1.0)
    model = nnx.merge(run.eng.graphdef, run.eng.state)
    res = evaluate(model, run.tok, run.task, cfg, tmp_path, progress=False)
    base = sample_accuracy(model, run.tok, run.task, limit=6, n=2, temperature=1.0,
                           max_new_tokens=12, seed=cfg.seed, progress=False)
    pool = float(np.mean(res["pool"]["sample_at_1_by_candidate"][:2]))
    assert abs(base["sample@1"] - pool) <= 1 / 12 + 1e-9, (base["sample@1"], pool)


def test_eval_killed_midway_resumes_to_the_uninterrupted_result(setup, tmp_path, caplog, monkeypatch):
    from flax import nnx

    from jaxselfeval.errors import JSEError
    from jaxselfeval.evaluate import harness
    from jaxselfeval.evaluate.harness import EvalConfig, evaluate

    run, _ = setup
    cfg = EvalConfig(limit=6, n=4, batch_prompts=2, max_new_tokens=12, rounds=(1, 1, 2),
                     round_temperatures=(0.0, 0.7, 1.0), thresholds=(0.5,), prune_at=(4,),
                     keep_fractions=(0.25,))
    model = nnx.merge(run.eng.graphdef, run.eng.state)
    whole = evaluate(model, run.tok, run.task, cfg, tmp_path / "whole", progress=False)

    real, calls = harness._evaluate_chunk, []

    def dies_on_the_second_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(harness, "_evaluate_chunk", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, run.tok, run.task, cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(harness, "_evaluate_chunk", real)
    chunks = tmp_path / "killed" / "chunks"
    assert sorted(p.name for p in chunks.glob("chunk-*")) == ["chunk-000000.json"]
    assert not (tmp_path / "killed" / "results.json").exists()
    with caplog.at_level("INFO"):
        resumed = evaluate(model, run.tok, run.task, cfg, tmp_path / "killed", progress=False)
    assert "1 of 3 chunks already evaluated" in caplog.text
    assert _comparable(resumed) == _comparable(whole)
    assert resumed["summary"]["one"]["n"] == 6
    # and record for record (chosen outputs, token counts, scores), chunk by chunk
    assert _chunk_records(tmp_path / "killed") == _chunk_records(tmp_path / "whole")
    assert len(_chunk_records(tmp_path / "whole")) == 3
    # chunks of another evaluation are never mixed in
    with pytest.raises(JSEError, match="holds chunks of another evaluation"):
        evaluate(model, run.tok, run.task, dataclasses.replace(cfg, seed=1), tmp_path / "killed",
                 progress=False)
    from jaxselfeval.evaluate import chunks as chunk_format  # nor those an older version wrote

    monkeypatch.setattr(chunk_format, "FORMAT", chunk_format.FORMAT + 1)
    with pytest.raises(JSEError, match="holds chunks of another evaluation"):
        evaluate(model, run.tok, run.task, cfg, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    # nor those of the same weights sampled in another dtype: a bf16 checkpoint loaded in f32
    # and in bf16 has equal values, so the dtypes themselves must tell them apart
    bf = jse.save_pretrained(model, tmp_path / "bf16", dtype="bfloat16")
    as32, as16 = jse.load_pretrained(bf, "float32"), jse.load_pretrained(bf, "bfloat16")
    assert chunk_format.fingerprint(cfg, as32, 6, False) != chunk_format.fingerprint(cfg, as16, 6,
                                                                                     False)


def test_runner_top_p_reaches_every_sampled_draw(setup):
    """A nucleus of one token (top_p tiny) makes every draw at T=1 the greedy one: the pool and
    the adaptive rounds sample through the runner's top_p; top_p outside (0, 1] is refused."""
    run, exs = setup
    model = nnx.merge(run.eng.graphdef, run.eng.state)
    narrow = Runner(model, run.tok, run.task, seed=0, max_new_tokens=12, top_p=1e-6)
    P = run.prompts(exs)
    greedy = Engine.outputs(run.eng.decode(P, run.branch(P, 1, 0.0)))
    pool = S.sample_pool(narrow, exs, n=3, temperature=1.0, probe_at=(4,))
    assert pool["outs"] == [g for g in greedy for _ in range(3)]
    wide = S.sample_pool(run, exs, n=3, temperature=1.0, probe_at=(4,))
    assert wide["outs"] != pool["outs"]  # without the cut, T=1 draws differ from greedy
    recs = adaptive(LiveDriver(narrow, exs), AdaptiveConfig((1, 2), 1.0, (1.0, 1.0), 3))
    assert [r.output for r in recs] == greedy
    with pytest.raises(jse.JSEError, match="top_p must be in"):
        Runner(model, run.tok, run.task, top_p=0.0)


def test_pool_stats_split_the_token_auroc_by_kind_of_response():
    """by_kind: a kind whose wrong samples all score below every right one has AUROC 1 against
    the right ones; a kind whose right and wrong samples score alike is at chance within it."""
    from jaxselfeval.evaluate.report import kind_lines

    correct = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], float)
    kind = np.array([[0, 0, 1, 0], [0, 1, 0, 0]])  # 0: worked, 1: direct
    score = np.array([[0.9, 0.8, 0.1, 0.85], [0.7, 0.2, 0.6, 0.65]])
    st = pool_stats(correct, score, kind=kind, kinds=("worked", "direct"))["by_kind"]
    d, w = st["direct"], st["worked"]
    assert (d["share"], d["accuracy"], d["wrong"]) == (0.25, 0.0, 2)
    assert d["auroc_vs_right"] == 1.0 and d["auroc_within_vs_right"] == 1.0
    assert np.isnan(d["auroc_in_kind"])  # no right direct answer
    assert (w["share"], w["accuracy"], w["wrong"]) == (0.75, 4 / 6, 2)
    # worked: right 0.9, 0.8 / 0.7, 0.6 vs wrong 0.85 / 0.65: within each prompt 1 of 2 pairs
    assert w["auroc_within_in_kind"] == 0.5
    assert w["auroc_in_kind"] == auroc(np.array([0.9, 0.8, 0.85, 0.7, 0.6, 0.65]),
                                       np.array([1, 1, 0, 1, 1, 0]))
    text = "\n".join(kind_lines({"by_kind": st}))
    assert "| direct | 25.0% | 0.0% |" in text and "1.000 / 1.000 (2 wrong)" in text
    assert "by_kind" not in pool_stats(correct, score)  # a task without kinds


@pytest.mark.parametrize("signal", ["self", "likelihood", "combined"])
@pytest.mark.parametrize("prune_at", [None, 4])
def test_pool_replay_equals_the_live_rounds_for_every_signal(setup, prune_at, signal):
    """One adaptive implementation over two drivers: the trace replayed from a pool at the
    rounds' temperature and the greedy run equals running the rounds live (plain, and each round
    pruned at 4 tokens to half), ranked by the token, the likelihood or both; and pruning
    replayed equals pruning live. The pool does not replay rounds at another temperature or
    past its candidates."""
    from jaxselfeval.evaluate.harness import _greedy

    run, exs = setup
    cfg = AdaptiveConfig((1, 1, 2, 4), 1.0, (0.0, 0.7, 0.7, 0.7), 8, prune_at=prune_at,
                         keep_fraction=0.5 if prune_at else 1.0)
    _, real = adaptive(LiveDriver(run, exs, signal=signal), cfg, trace=True)
    pool = S.sample_pool(run, exs, n=8, temperature=0.7, probe_at=(4,))
    _, greedy = _greedy(run, exs, 0)
    drv = PoolDriver(pool, exs, greedy, temperature=0.7, probe_len=run.probe_len, signal=signal)
    assert drv.replays(cfg)
    _, read = adaptive(drv, cfg, trace=True)
    assert len(read) == len(real) == 4
    for a, b in zip(read, real):
        for k in ("samples", "gen", "probes", "ok"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_allclose(a["best"], b["best"], atol=1e-5)
    if signal == "likelihood":  # free: no probe tokens counted
        assert all((r["probes"] == 0).all() for r in read)
    pc = PruneConfig(n=8, at_tokens=4, keep_fraction=0.25, temperature=0.7)
    live = prune(LiveDriver(run, exs, signal=signal), pc)
    replay = prune(drv, pc)
    assert [(r.correct, r.gen_tokens, r.probe_tokens, r.output) for r in live] == \
        [(r.correct, r.gen_tokens, r.probe_tokens, r.output) for r in replay]
    assert not PoolDriver(pool, exs, greedy, temperature=1.0, probe_len=1).replays(cfg)
    assert not drv.replays(dataclasses.replace(cfg, rounds=(1, 1, 2, 8), max_samples=12))
