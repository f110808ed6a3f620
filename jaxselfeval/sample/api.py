"""High-level sampling API: `generate` and `self_evaluate`."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.sample.engine import Engine, bucket, left_pad
from jaxselfeval.sample.probe import no_share, probe_spec


def _stop_ids(model, tokenizer=None, stop_ids=None):
    if stop_ids is not None:
        return tuple(stop_ids)
    ids = set(model.config.eos_ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def generate(model, prompt_ids: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int = 128,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             stop_ids: Sequence[int] | None = None, tokenizer=None) -> list[list[list[int]]]:
    """Sample n continuations per prompt (prefill once, branch to n, decode in a while_loop).

    Returns [prompt][candidate] -> new token ids (ending with the stop token if one was emitted).
    temperature 0 is greedy. Stops at the model's eos ids (and the tokenizer's, if given).
    """
    if not prompt_ids:
        raise JSEError("no prompts given")
    # cheap: the compiled prefill/branch/decode are shared by model structure (engine.compiled)
    eng = Engine(model, stop_ids=_stop_ids(model, tokenizer, stop_ids), seed=seed, top_k=top_k)
    prompts = eng.prefill(prompt_ids)
    cands = eng.branch(prompts, n, max_new_tokens, temperature=temperature, top_p=top_p)
    cands = eng.decode(prompts, cands, until=max_new_tokens)
    rows = Engine.outputs(cands)
    return [rows[i * n:(i + 1) * n] for i in range(len(prompt_ids))]


def self_evaluate(model, tokenizer, prompt_ids: Sequence[Sequence[int]],
                  response_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """P(No) / (P(Yes) + P(No)) after each (prompt, response) pair and the probe turn. f32 [pairs].

    One forward per pair over prompt + response (+ eot) + probe suffix, batched with left
    padding to bucketed [rows, length] (`bucket`), jitted once per model structure and bucket;
    only the last position's Yes and No logits are computed (`no_share`).
    """
    import jax.numpy as jnp
    from flax import nnx

    if len(prompt_ids) != len(response_ids):
        raise JSEError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses: give one "
                       "response per prompt")
    spec = probe_spec(tokenizer)
    seqs = [list(p) + list(r) + spec.after(r) for p, r in zip(prompt_ids, response_ids)]
    toks, pos = left_pad(seqs, bucket(max(len(s) for s in seqs)), bucket(len(seqs), minimum=1))
    graphdef, state = nnx.split(model)
    score = _score_fn(graphdef)(state, jnp.asarray(toks), jnp.asarray(pos),
                                jnp.asarray([spec.yes, spec.no], jnp.int32))
    return np.asarray(score)[:len(seqs)].astype(np.float32)


@functools.lru_cache(maxsize=16)
def _score_fn(graphdef):
    """jit(state, tokens [R, T], positions [R, T], yes_no [2]) -> P(No) / (P(Yes) + P(No)) [R]."""
    import jax
    from flax import nnx

    def score(state, toks, pos, yes_no):
        model = nnx.merge(graphdef, state)
        h, _ = model.forward(toks, AttentionContext(pos, last_only=True))
        return no_share(model, h[:, 0], yes_no)

    return jax.jit(score)
