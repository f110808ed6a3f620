"""The sort-free sampler draws exactly what the full-sort reference draws, key for key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxselfeval.sample import sampling
from jaxselfeval.sample.sampling import row_keys, sample_tokens, sample_tokens_sorted


@pytest.fixture(params=["cpu", "tpu"])
def fast(request):
    """sample_tokens jitted for each nucleus implementation: lax.top_k prefixes (CPU) and the
    bisection with compaction (other platforms), both run here."""

    def f(x, keys, temp, tp, top_k=0):
        return sample_tokens(x, keys, temp, tp, top_k, platform=request.param)

    return jax.jit(f, static_argnames="top_k")


def _logits(B, V, scale, seed, ties=False):
    x = scale * jax.random.normal(jax.random.PRNGKey(seed), (B, V))
    if ties:  # many exact ties, at the top and at the nucleus boundary
        x = jnp.round(x * 2) / 2
    return x


def _keys(B, step):
    return row_keys(jax.random.PRNGKey(7), jnp.arange(B), jnp.arange(B) * 3, step)


@pytest.mark.parametrize("scale,ties", [(6.0, False), (3.0, False), (4.0, True)])
@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.5])
def test_draws_equal_sorted_reference(fast, scale, ties, top_p):
    B, V = 32, 4096
    x = _logits(B, V, scale, seed=int(scale * 10) + ties)
    for step in range(8):
        temp = jnp.asarray(np.r_[np.zeros(4), np.full(14, 0.7), np.full(14, 1.3)], jnp.float32)
        tp = jnp.full((B,), top_p, jnp.float32)
        k = _keys(B, step)
        np.testing.assert_array_equal(np.asarray(fast(x, k, temp, tp)),
                                      np.asarray(sample_tokens_sorted(x, k, temp, tp)))


def test_greedy_is_argmax_and_mixed_rows(fast):
    B, V = 16, 1000
    x = _logits(B, V, 2.0, seed=3)
    temp = jnp.asarray([0.0, 1.0] * 8, jnp.float32)
    tp = jnp.asarray([1.0, 0.9, 0.3, 1.0] * 4, jnp.float32)
    got = np.asarray(fast(x, _keys(B, 0), temp, tp))
    np.testing.assert_array_equal(got[::2], np.asarray(jnp.argmax(x, -1))[::2])
    np.testing.assert_array_equal(got, np.asarray(sample_tokens_sorted(x, _keys(B, 0), temp, tp)))
    allg = np.asarray(fast(x, _keys(B, 0), jnp.zeros(B), tp))
    np.testing.assert_array_equal(allg, np.asarray(jnp.argmax(x, -1)))


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_fallback_tiers_equal_reference(fast, scale):
    """Flat logits: the nucleus is wider than the first tier (and, at 0.05, than every tier), so
    the larger top_k and the full sort run; the draws still equal the reference."""
    B, V = 8, 3000
    x = _logits(B, V, scale, seed=5)
    tp = jnp.full((B,), 0.95, jnp.float32)
    temp = jnp.ones((B,), jnp.float32)
    vals = -np.sort(-np.asarray(jax.nn.softmax(x, -1)), -1)
    width = (np.cumsum(vals, -1) < 0.95).sum(-1).max() + 1
    assert width > sampling.TIERS[0]
    for step in range(6):
        k = _keys(B, step)
        np.testing.assert_array_equal(np.asarray(fast(x, k, temp, tp)),
                                      np.asarray(sample_tokens_sorted(x, k, temp, tp)))


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (40, 0.9)])
def test_top_k_equals_reference(fast, top_k, top_p):
    B, V = 16, 2000
    x = _logits(B, V, 2.0, seed=9, ties=True)
    temp, tp = jnp.ones((B,)), jnp.full((B,), top_p)
    for step in range(4):
        k = _keys(B, step)
        got = np.asarray(fast(x, k, temp, tp, top_k=top_k))
        np.testing.assert_array_equal(got, np.asarray(sample_tokens_sorted(x, k, temp, tp, top_k=top_k)))
        top = np.asarray(jax.lax.top_k(x, top_k)[1])
        assert all(g in t for g, t in zip(got, top))


def test_nucleus_and_distribution(fast):
    """Every draw lies in the nucleus; at top_p 1 the draw frequencies follow softmax(x / T)."""
    V, n = 50, 20000
    x = jnp.tile(_logits(1, V, 1.5, seed=11), (n, 1))
    k = row_keys(jax.random.PRNGKey(1), jnp.zeros(n, jnp.int32), jnp.arange(n), 0)
    p = np.asarray(jax.nn.softmax(x[0] / 0.8))
    got = np.asarray(fast(x, k, jnp.full((n,), 0.8), jnp.ones((n,))))
    freq = np.bincount(got, minlength=V) / n
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / n)
    order = np.argsort(-p, kind="stable")
    nucleus = set(order[:np.searchsorted(np.cumsum(p[order]), 0.6) + 1].tolist())
    got = np.asarray(fast(x, k, jnp.full((n,), 0.8), jnp.full((n,), 0.6)))
    assert set(got.tolist()) == nucleus


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's partial top-k")
@pytest.mark.parametrize("top_k", [0, 40])
def test_cpu_nucleus_runs_a_partial_top_k_not_a_sort(top_k):
    """On a CPU the nucleus prefix (and an engine top_k) is XLA's TopK: the gathers that read it
    must not fold it back into a sort of the whole vocabulary."""
    B, V = 16, 4096
    x = _logits(B, V, 6.0, seed=1)
    args = (x, _keys(B, 0), jnp.ones((B,)), jnp.full((B,), 0.95))
    hlo = jax.jit(sample_tokens, static_argnames="top_k").lower(*args, top_k=top_k).compile().as_text()
    assert 'custom_call_target="TopK"' in hlo


def test_prefix_scan_is_length_independent():
    a = jax.random.uniform(jax.random.PRNGKey(0), (4, 5000)) / 5000
    full = np.asarray(sampling._cumsum(a))
    for K in (1, 63, 64, 1000):
        np.testing.assert_array_equal(np.asarray(sampling._cumsum(a[:, :K])), full[:, :K])


def test_engines_share_compiled_pieces():
    """A new Engine (each generate() call) or a new seed reuses the compiled pieces."""
    import jaxselfeval as jse
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.sample import Engine

    cfg = load_model_config("tiny")
    a = Engine(jse.create_model(cfg, seed=0), seed=0, stop_ids=(3,))
    b = Engine(jse.create_model(cfg, seed=1), seed=5, stop_ids=(3,))
    assert a.programs is b.programs
    assert Engine(jse.create_model(cfg), stop_ids=(4,)).programs is not a.programs
