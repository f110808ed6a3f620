"""Where adaptive sampling and pruning get their candidates: run live on the sampler, or replayed
from a pool sampled once. Both drivers give the same rounds for the same settings, because a
candidate's randomness is keyed by (prompt, candidate, step): the pool's candidate j of a prompt
is the candidate j a live round draws.

A *signal* ranks candidates, as a probability in [0, 1]:
- "self": the capability token, P(No) / (P(Yes) + P(No)) (one probe per candidate);
- "likelihood": the policy's own geometric-mean token probability, exp(mean token log-prob),
  free with decoding (no probe, no training);
- "combined": their product (log score + mean token log-probability, as `bon_combined`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.sample import Engine

SIGNALS = ("self", "likelihood", "combined")


def check_signal(signal: str) -> str:
    if signal not in SIGNALS:
        raise JSEError(f"unknown signal '{signal}': use one of {', '.join(SIGNALS)}")
    return signal


def combined_score(score, likelihood):
    """Self-evaluation x likelihood in log space, the `bon_combined` ranking: log score + the
    policy's mean token log-probability (arrays of one shape; scores floored at 1e-9)."""
    return np.log(np.maximum(score, 1e-9)) + likelihood


def signal_value(signal: str, score, mean_logprob) -> np.ndarray:
    """The signal from the token's score and the mean token log-probability (same shapes), as a
    probability: "combined" is exp(`combined_score`), the product of the two."""
    if signal == "self":
        return np.asarray(score, np.float64)
    lp = np.asarray(mean_logprob, np.float64)
    return np.exp(lp if signal == "likelihood" else combined_score(score, lp))


@dataclasses.dataclass
class Finished:
    """A round's candidates decoded to the end, per active prompt: signal, correct, length
    [A, k]; outputs [A][k] token ids (None where the driver keeps none)."""

    signal: np.ndarray
    correct: np.ndarray
    length: np.ndarray
    outputs: list | None


def padded_rows(active, total: int) -> np.ndarray:
    """The prompt rows a live round runs: `active`, padded (with copies of its last row, whose
    results are dropped) to the next power of four, or to `total` if that is smaller. Compaction
    then gives at most log4(total) + 2 batch sizes, so the jitted decode and probe compile once
    per size and round size instead of once for every count of prompts still active."""
    a = len(active)
    size = 1
    while size < a:
        size *= 4
    size = min(total, size)
    return np.concatenate([active, np.full(size - a, active[-1], int)]).astype(int)


class LiveDriver:
    """Rounds run on the Engine: the prompts prefilled once, compacted between rounds."""

    def __init__(self, run, examples, *, signal: str = "self", offset: int = 0):
        self.run, self.examples, self.signal = run, list(examples), check_signal(signal)
        self.probe_len = 0 if signal == "likelihood" else run.probe_len
        self.P = run.prompts(self.examples, offset)

    def score(self, P, C) -> np.ndarray:
        """The signal of every candidate row at its current length, [B]."""
        s = np.asarray(self.run.eng.probe(P, C, self.run.spec)) if self.probe_len else 0.0
        return signal_value(self.signal, s, Engine.mean_logprob(C))

    def round(self, active, r: int, temperature: float, cand: int) -> "LiveRound":
        return LiveRound(self, np.asarray(active, int), r, temperature, cand)


class LiveRound:
    def __init__(self, d: LiveDriver, active, r, temperature, cand):
        G = len(d.examples)
        self.d, self.active, self.r, self.A = d, active, r, len(active)
        self.rows = padded_rows(active, G)
        self.P = d.P if self.A == G else Engine.select_prompts(d.P, self.rows)
        self.C = d.run.branch(self.P, r, temperature, cand_offset=cand)

    def _per_prompt(self, x) -> np.ndarray:
        return np.asarray(x).reshape(-1, self.r)[:self.A]

    def early(self, t: int):
        """Decode to t tokens -> (signal, length) [A, r] there."""
        self.C = self.d.run.eng.decode(self.P, self.C, until=t)
        return self._per_prompt(self.d.score(self.P, self.C)), self._per_prompt(self.C.length)

    def keep(self, kept: np.ndarray):
        """Keep candidates `kept` [A, k] (indices among each prompt's r): their cache rows are
        gathered, the rest dropped (padding rows keep their first k)."""
        k = kept.shape[1]
        full = np.concatenate([kept, np.tile(np.arange(k), (len(self.rows) - self.A, 1))])
        self.C = Engine.select(self.C, (full + self.r * np.arange(len(self.rows))[:, None]).ravel())
        self.r = k

    def finish(self) -> Finished:
        run = self.d.run
        self.C = run.eng.decode(self.P, self.C)
        s = self._per_prompt(self.d.score(self.P, self.C))
        outs = Engine.outputs(self.C)
        outs = [[outs[i * self.r + j] for j in range(self.r)] for i in range(self.A)]
        ok = np.array([[run.correct(self.d.examples[g], o) for o in outs[i]]
                       for i, g in enumerate(self.active)])
        return Finished(s, ok, self._per_prompt(self.C.length), outs)


class PoolDriver:
    """Rounds read off a pool (`sample_pool`) sampled at `temperature` and a greedy run: a round
    of r candidates at the pool's temperature draws the pool's candidates [cand, cand + r); a
    round of one at temperature 0 is the greedy run.

    greedy: {"score", "likelihood", "correct", "length"} [G] of the greedy run (probed at its
    end), or None when no round is greedy."""

    def __init__(self, pool, examples, greedy=None, *, temperature: float, probe_len: int,
                 signal: str = "self"):
        self.pool, self.greedy, self.temperature = pool, greedy, temperature
        self.examples = list(examples)
        self.signal = check_signal(signal)
        self.probe_len = 0 if signal == "likelihood" else probe_len

    def value(self, t: int | None = None) -> np.ndarray:
        """The pool's signal [P, n] at t tokens (None: complete responses)."""
        p = self.pool
        if t is None:
            return signal_value(self.signal, p["score"], p.get("likelihood"))
        return signal_value(self.signal, p["score_at"][t], p.get("likelihood_at", {}).get(t))

    def replays(self, cfg) -> bool:
        """Whether cfg's rounds draw only the pool's candidates and the greedy run."""
        n, cand = self.pool["score"].shape[1], 0
        for r, temp in zip(cfg.rounds, cfg.temperatures):
            if temp == 0 and r == 1:
                if self.greedy is None:
                    return False
            elif temp != self.temperature or cand + r > n:
                return False
            cand += r
        t = cfg.prune_at
        return t is None or t in self.pool["score_at"]

    def round(self, active, r: int, temperature: float, cand: int) -> "PoolRound":
        return PoolRound(self, np.asarray(active, int), r, None if temperature == 0 else cand)


class PoolRound:
    def __init__(self, d: PoolDriver, active, r, c0):
        self.d, self.active = d, active
        self.cols = np.tile(np.arange(r) if c0 is None else np.arange(c0, c0 + r), (len(active), 1))
        self.greedy = c0 is None

    def _take(self, a) -> np.ndarray:
        return np.take_along_axis(np.asarray(a)[self.active], self.cols, axis=1)

    def early(self, t: int):
        L = self._take(self.d.pool["length"])
        return self._take(self.d.value(t)), np.minimum(L, t)

    def keep(self, kept: np.ndarray):
        self.cols = np.take_along_axis(self.cols, kept, axis=1)

    def finish(self) -> Finished:
        d = self.d
        if self.greedy:
            g = d.greedy
            s = signal_value(d.signal, g["score"], g.get("likelihood"))
            return Finished(*(np.asarray(x)[self.active][:, None]
                              for x in (s, g["correct"], g["length"])), None)
        outs = d.pool.get("outs")
        n = d.pool["score"].shape[1]
        return Finished(self._take(d.value()), self._take(d.pool["correct"]),
                        self._take(d.pool["length"]),
                        None if outs is None else [[outs[g * n + j] for j in row]
                                                   for g, row in zip(self.active, self.cols)])
