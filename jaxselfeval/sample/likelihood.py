"""The policy's own log-likelihood of a response: a training-free Best-of-N score.

A response's mean token log-probability under the model (teacher-forced, at temperature 1).
Sampled wrong answers often contain a token the model itself found unlikely, so this ranks a
prompt's samples without a reward model or any training: the baseline the capability token is
compared with in the evaluation report. The sampler tracks it for what it emits
(`Candidates.logprob`, `Engine.mean_logprob`, checked against this function); use this one to
score responses that came from elsewhere.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxselfeval.errors import JSEError
from jaxselfeval.sample.sampling import token_logprob
from jaxselfeval.train.data import padded_len


@functools.partial(jax.jit, static_argnums=0)
def _token_logprobs(graphdef, state, tokens):
    """tokens int32 [B, S] -> f32 [B, S - 1]: log p(tokens[:, t + 1] | tokens[:, :t + 1])."""
    return token_logprob(nnx.merge(graphdef, state)(tokens)[:, :-1], tokens[:, 1:])


def response_logprobs(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                      *, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced log-probabilities of each response given its prompt.

    prompts[i] + responses[i] is one sequence (right-padded in batches of `batch`; padding comes
    after a row's tokens, so causal attention never sees it). Returns (sum f32 [N], count int [N]):
    the summed log-probability of response i's tokens and their number (mean = sum / count; an
    empty response has sum 0 and count 0).
    """
    if len(prompts) != len(responses):
        raise JSEError(f"{len(prompts)} prompts for {len(responses)} responses: give one each")
    if any(len(p) == 0 for p in prompts):
        raise JSEError("a prompt is empty: the first response token needs a prompt to follow")
    g, st = nnx.split(model)
    N = len(prompts)
    total = np.zeros(N, np.float32)
    count = np.array([len(r) for r in responses], np.int64)
    limit = model.config.max_position_embeddings
    for s in range(0, N, batch):
        seqs = [list(p) + list(r) for p, r in zip(prompts[s:s + batch], responses[s:s + batch])]
        longest = max(len(q) for q in seqs)
        if longest > limit:
            raise JSEError(f"a prompt + response of {longest} tokens is longer than the model's "
                           f"context ({limit})")
        toks = np.zeros((batch, min(padded_len(longest), limit)), np.int32)
        mask = np.zeros((batch, toks.shape[1] - 1), np.float32)
        for j, (p, q) in enumerate(zip(prompts[s:s + batch], seqs)):
            toks[j, :len(q)] = q
            mask[j, len(p) - 1:len(q) - 1] = 1.0
        lp = np.asarray(_token_logprobs(g, st, jnp.asarray(toks)))
        total[s:s + len(seqs)] = (lp * mask).sum(1)[:len(seqs)]
    return total, count


def mean_logprob(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean token log-probability f32 [N] (an empty response scores -inf: never preferred)."""
    return np.where(count > 0, total / np.maximum(count, 1), -np.inf).astype(np.float32)
