"""Per-row token sampling: temperature (0 = greedy), top-k, top-p; keys by (prompt, cand, step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def row_keys(seed_key, prompt_id, cand_id, step):
    """[B] keys: fold_in(fold_in(fold_in(seed, prompt), candidate), step) — independent of batch."""
    def one(p, c, s):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(seed_key, p), c), s)

    return jax.vmap(one, in_axes=(0, 0, None if jnp.ndim(step) == 0 else 0))(prompt_id, cand_id, step)


def sample_tokens(logits, keys, temperature, top_p, top_k: int = 0):
    """logits f32 [B, V]; keys [B]; temperature [B] (0 = greedy); top_p [B] -> int32 [B]."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    t = jnp.maximum(temperature, 1e-6)[:, None]
    x = logits / t
    if top_k:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    srt = jnp.sort(x, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1)
    # smallest logit still inside the nucleus: keep tokens whose preceding mass < top_p
    n_keep = jnp.sum((cum - jax.nn.softmax(srt, axis=-1)) < top_p[:, None], axis=-1)
    cutoff = jnp.take_along_axis(srt, jnp.maximum(n_keep - 1, 0)[:, None], axis=-1)
    x = jnp.where(x < cutoff, -jnp.inf, x)
    sampled = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, x).astype(jnp.int32)
    return jnp.where(temperature <= 0, greedy, sampled)


def token_logprob(logits, tokens):
    """logits [..., V], tokens int32 [...] -> f32 [...]: log p(token) at temperature 1."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]
