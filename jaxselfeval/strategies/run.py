"""The Runner (model + tokenizer + task on one sampling engine), the pool of samples every
pooled strategy reads, and Best-of-N / majority over it. Adaptive sampling and pruning are in
`strategies.rounds`, over the drivers of `strategies.driver`. Candidate randomness is keyed by
(prompt, candidate, step), so the same candidate draws the same tokens under every strategy: pooled statistics (Best-of-N for N < 16,
threshold and prune sweeps) are exact, not estimates.
"""

from __future__ import annotations

import time

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.evaluate.records import PromptRecord
from jaxselfeval.sample import Engine, probe_spec
from jaxselfeval.selfeval.reward_model import score_responses
from jaxselfeval.strategies.driver import combined_score, signal_value
from jaxselfeval.strategies.registry import BY_RECORD
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


def sample_pool(run: Runner, examples, *, n=16, temperature=1.0, probe_at=(16,), offset=0):
    """n full samples per prompt, probed at each `probe_at` token count and at the end.

    Returns dict: correct [P, n], score [P, n] (final), score_at {t: [P, n]}, length [P, n],
    likelihood [P, n] (mean token log-probability, tracked while decoding) and likelihood_at
    {t: [P, n]} (over the first t tokens), strict [P, n] (correct read strictly, after '####'),
    kind [P, n] (the
    task's `response_kind`: the way each response went, -1 when it tells none), answers [P][n],
    wall_s (decode + final probe).
    """
    P = run.prompts(examples, offset)
    t0 = time.perf_counter()
    C = run.branch(P, n, temperature)
    score_at, likelihood_at = {}, {}
    for t in sorted(probe_at):
        C = run.eng.decode(P, C, until=t)
        score_at[t] = np.asarray(run.eng.probe(P, C, run.spec)).reshape(-1, n)
        likelihood_at[t] = Engine.mean_logprob(C).reshape(-1, n)
    C = run.eng.decode(P, C)
    score = np.asarray(run.eng.probe(P, C, run.spec)).reshape(-1, n)
    wall = time.perf_counter() - t0
    outs = Engine.outputs(C)
    G = len(examples)
    texts = [run.tok.decode(o) for o in outs]
    correct = np.array([[run.task.verify(examples[g], texts[g * n + j]) for j in range(n)]
                        for g in range(G)])
    strict = np.array([[run.task.verify_strict(examples[g], texts[g * n + j]) for j in range(n)]
                       for g in range(G)])
    answers = [[run.task.extract_answer(texts[g * n + j]) for j in range(n)] for g in range(G)]
    kind = np.array([run.task.response_kind(t) for t in texts]).reshape(G, n)
    length = np.array([len(o) for o in outs]).reshape(G, n)
    return {"correct": correct, "score": score, "score_at": score_at, "length": length,
            "likelihood": Engine.mean_logprob(C).reshape(G, n), "likelihood_at": likelihood_at,
            "strict": strict, "kind": kind,
            "answers": answers, "wall_s": wall, "n": n, "outs": outs,
            "prompt_ids": [encode_chat(run.tok, run.task.messages(e)) for e in examples]}


def add_rm_scores(pool, rm, batch: int = 64):
    """Score every pooled candidate with an external reward model -> pool["rm_score"] [P, n]."""
    n = pool["n"]
    outs = [pool["outs"][g * n:(g + 1) * n] for g in range(len(pool["prompt_ids"]))]
    pool["rm_score"] = score_responses(rm, pool["prompt_ids"], outs, rows=batch)
    return pool


def vote(answers, weights) -> int | None:
    """Index of the first candidate giving the answer whose candidates' `weights` sum highest
    (ties: the answer seen first), None when no candidate gave an answer. `answers` [n] (None:
    no answer read), `weights` [n]; equal weights make it majority vote."""
    total: dict = {}
    for a, w in zip(answers, weights):
        if a is not None:
            total[a] = total.get(a, 0.0) + float(w)
    if not total:
        return None
    top = max(total, key=total.get)  # the first answer reaching the maximum
    return list(answers).index(top)


def pool_records(pool, examples, strategy: str, *, n: int | None = None, probe_len: int = 0):
    """Records of a pooled strategy (`registry.STRATEGIES`, by record name) over each prompt's
    first `n` candidates: "one" takes the first; a vote (`votes_by`) the first candidate giving
    the answer whose candidates' signal sums highest (majority: a count; "self" the token's
    score, "likelihood" the mean token probability, "combined" their product); the others the
    argmax of their `ranks_by` field ("combined": log(score) + the mean token log-probability,
    the capability token's estimate and the policy's own surprise at its tokens, both
    log-probabilities; "correct": the oracle)."""
    st = BY_RECORD[strategy]
    if not st.pooled or st.record == "greedy":
        raise ValueError(f"{strategy} is not read off a pool")
    n = n or pool["n"]
    recs = []
    for g, e in enumerate(examples):
        c, s, L = pool["correct"][g, :n], pool["score"][g, :n], pool["length"][g, :n]
        ok = None
        if st.record == "one":
            j, n_used, toks = 0, 1, L[0]
        elif st.votes_by:
            answers = pool["answers"][g][:n]
            w = (np.ones(n) if st.votes_by == "one"
                 else signal_value(st.votes_by, s, pool["likelihood"][g, :n]))
            j = vote(answers, w)
            ok = 0.0 if j is None else float(answers[j] == e.answer)
            j, n_used, toks = j or 0, n, L.sum()
        else:
            rank = (combined_score(s, pool["likelihood"][g, :n]) if st.ranks_by == "combined"
                    else pool[st.ranks_by][g, :n])
            j, n_used, toks = int(np.argmax(rank)), n, L.sum()
        recs.append(PromptRecord(e.id, float(c[j] if ok is None else ok), int(n_used), int(toks),
                                 int(n * probe_len if st.token else 0), difficulty=e.difficulty,
                                 chosen_score=(float(s[j]) if st.ranks_by in (
                                     "score", "likelihood", "combined") or st.votes_by in (
                                     "self", "likelihood", "combined") else None),
                                 output=pool["outs"][g * pool["n"] + j] if "outs" in pool else None))
    return recs


def full_run_wall(run: Runner, examples, n: int, temperature=1.0, *, offset=0) -> float:
    """Wall time of Best-of-n without pruning (decode all n fully + final probe)."""
    P = run.prompts(examples, offset)
    t0 = time.perf_counter()
    C = run.eng.decode(P, run.branch(P, n, temperature))
    np.asarray(run.eng.probe(P, C, run.spec))
    return time.perf_counter() - t0
