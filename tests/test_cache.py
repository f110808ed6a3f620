"""Cached decoding equals the full forward; a shared prompt cache equals a per-row copy."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.model.context import AttentionContext

TOL = 1e-4


def _model(hf_models, name="llama3_gqa2_untied"):
    return jse.load_pretrained(hf_models[name][0])


def fwd(model, toks, positions=None, **ctx):
    """(logits, cache) of one forward in the attention context (positions, **ctx)."""
    h, cache = model.forward(toks, AttentionContext(positions, **ctx))
    return model.logits(h), cache


def test_prefill_then_decode_matches_full_forward(hf_models):
    model = _model(hf_models)
    rng = np.random.default_rng(0)
    toks = rng.integers(3, model.config.vocab_size, (2, 24)).astype(np.int32)
    full = np.asarray(model(toks))
    cache = jse.init_cache(model.config, 2, 32, jnp.float32)
    logits, cache = fwd(model, toks[:, :10], cache=cache)
    got = [np.asarray(logits)]
    step = jax.jit(lambda st, t, p, c: fwd(nnx.merge(g, st), t, p, cache=c))
    g, st = nnx.split(model)
    for t in range(10, 24):
        pos = jnp.full((2, 1), t, jnp.int32)
        logits, cache = step(st, toks[:, t:t + 1], pos, cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    assert int(cache.index) == 24
    assert np.abs(got - full).max() <= TOL


def test_left_padded_prefill_then_decode(hf_models):
    model = _model(hf_models, "theta5e5_gqa4_tied")
    rng = np.random.default_rng(1)
    toks = rng.integers(3, model.config.vocab_size, (2, 16)).astype(np.int32)
    mask = np.ones_like(toks)
    mask[1, :5] = 0  # row 1 is left padded by 5
    pos = np.where(mask == 1, np.cumsum(mask, 1) - 1, -1).astype(np.int32)
    cache = jse.init_cache(model.config, 2, 20, jnp.float32)
    _, cache = fwd(model, toks[:, :12], jnp.asarray(pos[:, :12]), cache=cache)
    logits, cache = fwd(model, toks[:, 12:], jnp.asarray(pos[:, 12:]), cache=cache)
    alone = np.asarray(model(toks[1:, 5:]))
    assert np.abs(np.asarray(logits)[1] - alone[0, 7:]).max() <= TOL


def test_shared_prefix_segment_equals_copied_prompt(hf_models):
    """G prompts cached once, N rows per prompt attend to it plus their own suffix cache."""
    model = _model(hf_models)
    cfg = model.config
    rng = np.random.default_rng(2)
    G, N, P, S = 2, 3, 9, 5
    prompts = rng.integers(3, cfg.vocab_size, (G, P)).astype(np.int32)
    suffix = rng.integers(3, cfg.vocab_size, (G * N, S)).astype(np.int32)
    pcache = jse.init_cache(cfg, G, P, jnp.float32)
    _, pcache = fwd(model, prompts, cache=pcache)
    ccache = jse.init_cache(cfg, G * N, S, jnp.float32)
    got = []
    for t in range(S):
        pos = jnp.full((G * N, 1), P + t, jnp.int32)
        lg, ccache = fwd(model, suffix[:, t:t + 1], pos, cache=ccache, prefix=pcache)
        got.append(np.asarray(lg))
    got = np.concatenate(got, 1)
    full = np.asarray(model(np.concatenate([np.repeat(prompts, N, 0), suffix], 1)))[:, P:]
    assert np.abs(got - full).max() <= TOL


def test_write_false_leaves_cache_untouched(hf_models):
    model = _model(hf_models)
    toks = np.arange(3, 15, dtype=np.int32)[None]
    cache = jse.init_cache(model.config, 1, 16, jnp.float32)
    _, cache = fwd(model, toks[:, :8], cache=cache)
    lg1, same = fwd(model, toks[:, 8:], jnp.arange(8, 12)[None], cache=cache, write=False)
    assert same is cache
    full = np.asarray(model(toks))
    assert np.abs(np.asarray(lg1) - full[:, 8:]).max() <= TOL


def test_forward_takes_the_attention_context_and_nothing_else():
    """The model's forward has no mode flags: what a call attends to and writes is its
    `AttentionContext`; hidden states come back, `logits` reads the vocabulary."""
    import inspect

    assert list(inspect.signature(jse.Llama.forward).parameters) == ["self", "tokens", "ctx"]
    fields = {f.name for f in __import__("dataclasses").fields(AttentionContext)}
    assert fields == {"positions", "prefix", "cache", "read_cache", "write", "last_only",
                      "platform"}
