"""Strategies over a batch of prompts, composed from the sampler's pieces.

Every function takes a `Runner` and a list of task examples and returns one `PromptRecord` per
example (plus details). Candidate randomness is keyed by (prompt, candidate, step), so the same
candidate draws the same tokens under every strategy: pooled statistics (Best-of-N for N < 16,
threshold and prune sweeps) are exact, not estimates.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.evaluate.records import PromptRecord
from jaxselfeval.sample import Engine, probe_spec
from jaxselfeval.selfeval.reward_model import score_responses
from jaxselfeval.strategies.config import AdaptiveConfig, PruneConfig
from jaxselfeval.tokenizer import encode_chat


class Runner:
    """Model + tokenizer + task, with one sampling engine and the probe spec. `top_p` applies
    to every sampled draw (temperature > 0) of every strategy."""

    def __init__(self, model, tokenizer, task, *, seed: int = 0, max_new_tokens: int = 96,
                 top_p: float = 1.0):
        if not 0.0 < float(top_p) <= 1.0:
            raise JSEError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p}")
        self.tok, self.task, self.max_new, self.top_p = tokenizer, task, max_new_tokens, float(top_p)
        self.eng = Engine(model, stop_ids=(tokenizer.eos_token_id,), seed=seed)
        self.spec = probe_spec(tokenizer)
        self.probe_len = len(self.spec.suffix) + 1

    def prompts(self, examples, offset=0):
        ids = [encode_chat(self.tok, self.task.messages(e)) for e in examples]
        return self.eng.prefill(ids, prompt_offset=offset)

    def branch(self, prompts, n: int, temperature: float, cand_offset: int = 0):
        """n candidates per prompt at `temperature` (0: greedy) and this runner's top_p."""
        return self.eng.branch(prompts, n, self.max_new, temperature=temperature,
                               top_p=self.top_p, cand_offset=cand_offset)

    def correct(self, example, ids) -> float:
        return self.task.verify(example, self.tok.decode(ids))


def combined_score(score, likelihood):
    """Self-evaluation x likelihood, the `bon_combined` ranking: log score + the policy's mean
    token log-probability (arrays of one shape; scores floored at 1e-9)."""
    return np.log(np.maximum(score, 1e-9)) + likelihood


def sample_pool(run: Runner, examples, *, n=16, temperature=1.0, probe_at=(16,), offset=0):
    """n full samples per prompt, probed at each `probe_at` token count and at the end.

    Returns dict: correct [P, n], score [P, n] (final), score_at {t: [P, n]}, length [P, n],
    likelihood [P, n] (mean token log-probability, tracked while decoding), kind [P, n] (the
    task's `response_kind`: the way each response went, -1 when it tells none), answers [P][n],
    wall_s (decode + final probe).
    """
    P = run.prompts(examples, offset)
    t0 = time.perf_counter()
    C = run.branch(P, n, temperature)
    score_at = {}
    for t in sorted(probe_at):
        C = run.eng.decode(P, C, until=t)
        score_at[t] = np.asarray(run.eng.probe(P, C, run.spec)).reshape(-1, n)
    C = run.eng.decode(P, C)
    score = np.asarray(run.eng.probe(P, C, run.spec)).reshape(-1, n)
    wall = time.perf_counter() - t0
    outs = Engine.outputs(C)
    G = len(examples)
    texts = [run.tok.decode(o) for o in outs]
    correct = np.array([[run.task.verify(examples[g], texts[g * n + j]) for j in range(n)]
                        for g in range(G)])
    answers = [[run.task.extract_answer(texts[g * n + j]) for j in range(n)] for g in range(G)]
    kind = np.array([run.task.response_kind(t) for t in texts]).reshape(G, n)
    length = np.array([len(o) for o in outs]).reshape(G, n)
    return {"correct": correct, "score": score, "score_at": score_at, "length": length,
            "likelihood": Engine.mean_logprob(C).reshape(G, n), "kind": kind,
            "answers": answers, "wall_s": wall, "n": n, "outs": outs,
            "prompt_ids": [encode_chat(run.tok, run.task.messages(e)) for e in examples]}


def add_rm_scores(pool, rm, batch: int = 64):
    """Score every pooled candidate with an external reward model -> pool["rm_score"] [P, n]."""
    n = pool["n"]
    outs = [pool["outs"][g * n:(g + 1) * n] for g in range(len(pool["prompt_ids"]))]
    pool["rm_score"] = score_responses(rm, pool["prompt_ids"], outs, rows=batch)
    return pool


def pool_records(pool, examples, strategy: str, *, n: int | None = None, probe_len: int = 0):
    """Records of pooled strategies over the first `n` candidates:
    one / bon_self / bon_rm / bon_likelihood / bon_combined / majority / oracle.

    bon_combined ranks by log(score) + the mean token log-probability: the capability token's
    estimate and the policy's own surprise at its tokens, both log-probabilities."""
    n = n or pool["n"]
    recs = []
    for g, e in enumerate(examples):
        c, s, L = pool["correct"][g, :n], pool["score"][g, :n], pool["length"][g, :n]
        probes = 0
        if strategy == "one":
            j, n_used, toks = 0, 1, L[0]
        elif strategy == "bon_self":
            j, n_used, toks, probes = int(np.argmax(s)), n, L.sum(), n * probe_len
        elif strategy == "bon_rm":  # an external RM reads every candidate once more
            j, n_used, toks = int(np.argmax(pool["rm_score"][g, :n])), n, L.sum()
        elif strategy == "bon_likelihood":  # the policy's own log-probability, free with decoding
            j, n_used, toks = int(np.argmax(pool["likelihood"][g, :n])), n, L.sum()
        elif strategy == "bon_combined":
            both = combined_score(s, pool["likelihood"][g, :n])
            j, n_used, toks, probes = int(np.argmax(both)), n, L.sum(), n * probe_len
        elif strategy == "majority":  # the first candidate that gave the most common answer
            answers = pool["answers"][g][:n]
            votes = collections.Counter(a for a in answers if a is not None)
            top = votes.most_common(1)[0][0] if votes else None
            j = answers.index(top) if votes else 0
            n_used, toks = n, L.sum()
        elif strategy == "oracle":
            j, n_used, toks = int(np.argmax(c)), n, L.sum()
        else:
            raise ValueError(strategy)
        ok = float(top == e.answer) if strategy == "majority" else c[j]
        recs.append(PromptRecord(e.id, float(ok), int(n_used), int(toks), int(probes),
                                 difficulty=e.difficulty,
                                 chosen_score=(float(s[j]) if strategy in ("bon_self", "bon_likelihood",
                                                                           "bon_combined")
                                               else None),
                                 output=pool["outs"][g * pool["n"] + j] if "outs" in pool else None))
    return recs


def prune_records(pool, examples, cfg: PruneConfig, probe_len: int):
    """Early pruning, from the pool: keep the top `keep` by the score at `at_tokens`, return the
    best final score among them. Exact: survivors' tokens equal their unpruned runs."""
    n, keep, t = cfg.n, cfg.keep, cfg.at_tokens
    recs = []
    for g, e in enumerate(examples):
        s_at = pool["score_at"][t][g, :n]
        kept = np.sort(np.argsort(-s_at, kind="stable")[:keep])
        best = kept[int(np.argmax(pool["score"][g, kept]))]
        L = pool["length"][g, :n]
        toks = int(np.minimum(L, t).sum() + np.maximum(L[kept] - t, 0).sum())
        recs.append(PromptRecord(e.id, float(pool["correct"][g, best]), n, toks,
                                 (n + keep) * probe_len, difficulty=e.difficulty,
                                 chosen_score=float(pool["score"][g, best])))
    return recs


def padded_rows(active, total: int) -> np.ndarray:
    """The prompt rows a round runs: `active`, padded (with copies of its last row, whose results
    are dropped) to the next power of four, or to `total` if that is smaller. Compaction then
    gives at most log4(total) + 2 batch sizes, so the jitted decode and probe compile once per
    size and round size instead of once for every count of prompts still active, and the same
    few sizes recur from one batch of prompts to the next (a later batch compiles little). A
    round of few prompts is cheap, so its padding costs little."""
    a = len(active)
    size = 1
    while size < a:
        size *= 4
    size = min(total, size)
    return np.concatenate([active, np.full(size - a, active[-1], int)]).astype(int)


def adaptive(run: Runner, examples, cfg: AdaptiveConfig, *, offset=0, trace=False):
    """Adaptive sampling: rounds of growing size over the prompts still active; a prompt stops
    when its best score reaches the threshold. The prompt cache is prefilled once and compacted
    (gathered) between rounds, so finished prompts cost nothing and restarts never prefill.
    With cfg.prune_at set, each round is also pruned early (`AdaptiveConfig.keep`): its
    candidates are probed after prune_at tokens and only the best are decoded to the end.

    With trace=True every round runs for every prompt (no stopping) and the per-round best
    scores/correctness are returned too, for exact threshold sweeps.
    """
    G = len(examples)
    P = run.prompts(examples, offset)
    t0 = time.perf_counter()
    best = np.full(G, -1.0)
    best_ok = np.zeros(G)
    best_out: list = [None] * G
    samples = np.zeros(G, int)
    gen = np.zeros(G, int)
    probes = np.zeros(G, int)
    active = np.arange(G)
    cand = 0
    rounds = []
    for r, temp in zip(cfg.rounds, cfg.temperatures):
        if len(active) == 0:
            break
        A = len(active)
        rows = padded_rows(active, G)
        Pk = P if A == G else Engine.select_prompts(P, rows)
        C = run.branch(Pk, r, temp, cand_offset=cand)
        keep = cfg.keep(r)
        if keep < r:  # prune this round: probe all r early, decode only the best `keep`
            C = run.eng.decode(Pk, C, until=cfg.prune_at)
            s_early = run.eng.probe(Pk, C, run.spec)
            before = np.asarray(C.length).reshape(-1, r).sum(1)[:A]
            C = Engine.select(C, Engine.top_rows(s_early, r, keep))
            gen[active] += before - np.asarray(C.length).reshape(-1, keep).sum(1)[:A]  # pruned
            probes[active] += r * run.probe_len
        C = run.eng.decode(Pk, C)
        s = np.asarray(run.eng.probe(Pk, C, run.spec)).reshape(-1, keep)
        outs = Engine.outputs(C)
        for i, g in enumerate(active):
            j = int(np.argmax(s[i]))
            samples[g] += r
            gen[g] += sum(len(outs[i * keep + k]) for k in range(keep))
            probes[g] += keep * run.probe_len
            if s[i, j] > best[g]:
                best[g] = s[i, j]
                best_ok[g] = run.correct(examples[g], outs[i * keep + j])
                best_out[g] = outs[i * keep + j]
        rounds.append({"best": best.copy(), "ok": best_ok.copy(), "samples": samples.copy(),
                       "gen": gen.copy(), "probes": probes.copy()})
        cand += r
        if not trace:
            active = np.array([g for g in active if best[g] < cfg.threshold], int)
    wall = time.perf_counter() - t0
    recs = [PromptRecord(e.id, float(best_ok[g]), int(samples[g]), int(gen[g]), int(probes[g]),
                         wall_s=wall / G, difficulty=e.difficulty, chosen_score=float(best[g]),
                         output=best_out[g])
            for g, e in enumerate(examples)]
    return (recs, rounds) if trace else recs


def pool_trace(pool, greedy, cfg: AdaptiveConfig, probe_len: int, temperature: float):
    """The rounds of `adaptive(..., trace=True)` read off a pool sampled at `temperature` and a
    greedy run, or None when cfg's rounds draw otherwise. Candidates are keyed by (prompt,
    candidate, step), so a round of r candidates at the pool's temperature (and top_p) draws the
    pool's candidates [cand, cand + r), where cand counts the candidates of the rounds before it;
    a round of one at temperature 0 is the greedy run. A pruned round keeps the best by the
    pool's score at cfg.prune_at tokens, as the real run does (ties to the lower index).

    greedy: {"score", "correct", "length"} [G] of the greedy run (probed at its end).
    """
    n = pool["score"].shape[1]
    cand, plan = 0, []
    for r, temp in zip(cfg.rounds, cfg.temperatures):
        if temp == 0 and r == 1:
            plan.append(None)
        elif temp == temperature and cand + r <= n:
            plan.append(cand)
        else:
            return None
        cand += r
    t = cfg.prune_at
    if t is not None and t not in pool["score_at"]:
        return None
    G = pool["score"].shape[0]
    best, best_ok = np.full(G, -1.0), np.zeros(G)
    samples, gen, probes = (np.zeros(G, int) for _ in range(3))
    rounds = []
    for r, c0 in zip(cfg.rounds, plan):
        keep = cfg.keep(r)
        for g in range(G):
            if c0 is None:
                fs, ok, L = (np.atleast_1d(greedy[k][g]) for k in ("score", "correct", "length"))
                kept = np.arange(1)
            else:
                fs, ok = pool["score"][g, c0:c0 + r], pool["correct"][g, c0:c0 + r]
                L = pool["length"][g, c0:c0 + r]
                kept = np.arange(r)
                if keep < r:  # probed at t tokens, only the best `keep` decoded on
                    s_at = pool["score_at"][t][g, c0:c0 + r]
                    kept = np.sort(np.argsort(-s_at, kind="stable")[:keep])
                    gen[g] += int(np.minimum(L, t).sum() - np.minimum(L[kept], t).sum())
                    probes[g] += r * probe_len
            j = kept[int(np.argmax(fs[kept]))]
            samples[g] += r
            gen[g] += int(L[kept].sum())
            probes[g] += len(kept) * probe_len
            if fs[j] > best[g]:
                best[g], best_ok[g] = fs[j], ok[j]
        rounds.append({"best": best.copy(), "ok": best_ok.copy(), "samples": samples.copy(),
                       "gen": gen.copy(), "probes": probes.copy()})
    return rounds


def threshold_sweep(rounds, examples, thresholds):
    """Records for each threshold from a trace: a prompt stops after the first round whose best
    score reaches the threshold (identical to running `adaptive` with that threshold)."""
    out = {}
    for th in thresholds:
        recs = []
        for g, e in enumerate(examples):
            k = next((i for i, r in enumerate(rounds) if r["best"][g] >= th), len(rounds) - 1)
            r = rounds[k]
            recs.append(PromptRecord(e.id, float(r["ok"][g]), int(r["samples"][g]), int(r["gen"][g]),
                                     int(r["probes"][g]), difficulty=e.difficulty,
                                     chosen_score=float(r["best"][g])))
        out[float(th)] = recs
    return out


def prune_run(run: Runner, examples, cfg: PruneConfig, *, offset=0):
    """A real pruned run (for wall time): branch n, decode to `at_tokens`, probe, gather the top
    `keep` per prompt, decode only those, probe, return the best."""
    P = run.prompts(examples, offset)
    t0 = time.perf_counter()
    C = run.branch(P, cfg.n, cfg.temperature)
    C = run.eng.decode(P, C, until=cfg.at_tokens)
    s = run.eng.probe(P, C, run.spec)
    early = np.asarray(C.length).reshape(-1, cfg.n)
    rows = Engine.top_rows(s, cfg.n, cfg.keep)
    C = Engine.select(C, rows)
    kept_early = np.asarray(C.length).reshape(-1, cfg.keep)
    C = run.eng.decode(P, C)
    fs = np.asarray(run.eng.probe(P, C, run.spec)).reshape(-1, cfg.keep)
    wall = time.perf_counter() - t0
    outs = Engine.outputs(C)
    final = np.asarray(C.length).reshape(-1, cfg.keep)
    gen = early.sum(1) + (final - kept_early).sum(1)
    chosen = [outs[g * cfg.keep + int(np.argmax(fs[g]))] for g in range(len(examples))]
    return [PromptRecord(e.id, run.correct(e, chosen[g]), cfg.n,
                         int(gen[g]), (cfg.n + cfg.keep) * run.probe_len,
                         wall_s=wall / len(examples), difficulty=e.difficulty,
                         chosen_score=float(fs[g].max()), output=chosen[g])
            for g, e in enumerate(examples)], wall


def full_run_wall(run: Runner, examples, n: int, temperature=1.0, *, offset=0) -> float:
    """Wall time of Best-of-n without pruning (decode all n fully + final probe)."""
    P = run.prompts(examples, offset)
    t0 = time.perf_counter()
    C = run.eng.decode(P, run.branch(P, n, temperature))
    np.asarray(run.eng.probe(P, C, run.spec))
    return time.perf_counter() - t0
