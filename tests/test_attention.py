"""Attention implementations agree with the exact path (f32, 1e-5) on ragged, left-padded and
shared-prefix inputs, forward and gradient; the splash kernel in Pallas interpret mode; the
choice by backend; a long training step's compiled memory no longer holds [S, S] scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.model import attention as att
from jaxselfeval.model.attention import Segment, attend, attention, choose_impl
from jaxselfeval.model.blockwise import blockwise_attention
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.model.kernels import splash_attention

B, H, KVH, DH = 4, 4, 2, 16


def _rand(rng, *shape):
    return jnp.asarray(rng.normal(size=shape).astype(np.float32))


def _left_padded(lengths, S):
    """positions [len(lengths), S]: -1 for the left padding, then 0..len-1."""
    return jnp.asarray(np.stack([np.r_[[-1] * (S - n), np.arange(n)] for n in lengths]),
                       jnp.int32)


def _check(fn_a, fn_b, args, tol=1e-5):
    """Outputs and the gradients of a random projection of them agree within tol."""
    out_a, out_b = fn_a(*args), fn_b(*args)
    assert np.abs(np.asarray(out_a) - np.asarray(out_b)).max() <= tol
    w = _rand(np.random.default_rng(9), *out_a.shape)
    ga = jax.grad(lambda *a: (fn_a(*a) * w).sum(), argnums=tuple(range(len(args))))(*args)
    gb = jax.grad(lambda *a: (fn_b(*a) * w).sum(), argnums=tuple(range(len(args))))(*args)
    for x, y in zip(ga, gb):
        scale = max(1.0, float(np.abs(np.asarray(x)).max()))
        assert np.abs(np.asarray(x) - np.asarray(y)).max() <= tol * scale


@pytest.mark.parametrize("S", [37, 64, 150])
def test_blockwise_equals_exact_ragged_left_padded(S, monkeypatch):
    """Rows of different lengths (left padding, one row all padding), S not a multiple of the
    blocks; small blocks so several query and key blocks (and skipped ones) occur."""
    import functools

    monkeypatch.setattr(att, "blockwise_attention",
                        functools.partial(blockwise_attention, block_q=16, block_k=32))
    rng = np.random.default_rng(S)
    q, k, v = _rand(rng, B, S, H, DH), _rand(rng, B, S, KVH, DH), _rand(rng, B, S, KVH, DH)
    pos = _left_padded([S, S - 5, 1, 0], S)

    def exact(q, k, v):
        return attend(q, pos, [Segment(k, v, pos)])

    def blockwise(q, k, v):
        return attention(q, pos, [Segment(k, v, pos)], impl="blockwise")

    _check(exact, blockwise, (q, k, v))
    assert np.all(np.asarray(blockwise(q, k, v))[3] == 0)  # nothing visible: zeros, no NaN


def test_blockwise_equals_exact_shared_prefix_segments(monkeypatch):
    """A prompt cache shared by N=2 rows per group (G=2 groups, left-padded prompts), each row's
    own cache (with empty slots) and the current tokens: three segments merged by log-sum-exp."""
    import functools

    monkeypatch.setattr(att, "blockwise_attention",
                        functools.partial(blockwise_attention, block_q=8, block_k=16))
    rng = np.random.default_rng(1)
    G, P, C, S = 2, 40, 24, 20
    pk, pv = _rand(rng, G, P, KVH, DH), _rand(rng, G, P, KVH, DH)
    ppos = _left_padded([P, 29], P)
    plen = np.array([P, 29]).repeat(2)  # per row: its prompt's length
    ck, cv = _rand(rng, B, C, KVH, DH), _rand(rng, B, C, KVH, DH)
    cpos = jnp.asarray(np.where(np.arange(C)[None] < np.array([[10], [24], [3], [0]]),
                                plen[:, None] + np.arange(C)[None], -1), jnp.int32)
    ntok = np.array([10, 24, 3, 0])
    qpos = jnp.asarray(plen[:, None] + ntok[:, None] + np.arange(S)[None], jnp.int32)
    q, k, v = _rand(rng, B, S, H, DH), _rand(rng, B, S, KVH, DH), _rand(rng, B, S, KVH, DH)

    def segs(k, v, pk, pv):
        return [Segment(pk, pv, ppos), Segment(ck, cv, cpos), Segment(k, v, qpos)]

    def exact(q, k, v, pk, pv):
        return attend(q, qpos, segs(k, v, pk, pv))

    def blockwise(q, k, v, pk, pv):
        return attention(q, qpos, segs(k, v, pk, pv), impl="blockwise")

    _check(exact, blockwise, (q, k, v, pk, pv))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_decode_step_rowwise_equals_dot_path(dtype):
    """A decode step (S = 1) on a CPU attends its own cache and its current token by products and
    sums in the keys' layout (no dot): the same result as the dot path other platforms run, over
    a shared prompt, a ragged own cache (an empty row, a finished row at position -1) and the
    current token."""
    rng = np.random.default_rng(3)
    G, P, C = 2, 24, 12
    pk, pv = (_rand(rng, G, P, KVH, DH).astype(dtype) for _ in range(2))
    ppos = _left_padded([P, 17], P)
    plen = np.array([P, 17]).repeat(2)
    ck, cv = (_rand(rng, B, C, KVH, DH).astype(dtype) for _ in range(2))
    ntok = np.array([5, 12, 0, 7])
    cpos = jnp.asarray(np.where(np.arange(C)[None] < ntok[:, None],
                                plen[:, None] + np.arange(C)[None], -1), jnp.int32)
    qpos = jnp.asarray(np.where(np.arange(B) == 3, -1, plen + ntok)[:, None], jnp.int32)
    q = _rand(rng, B, 1, H, DH).astype(dtype)
    k, v = (_rand(rng, B, 1, KVH, DH).astype(dtype) for _ in range(2))
    segs = [Segment(pk, pv, ppos), Segment(ck, cv, cpos), Segment(k, v, qpos)]
    out = {}
    for plat in ("cpu", "gpu"):
        fn = jax.jit(lambda q, segs: attend(q, qpos, segs, compute_dtype=dtype, platform=plat))
        out[plat] = np.asarray(fn(q, segs))
        dots = str(jax.make_jaxpr(lambda q: attend(q, qpos, segs, compute_dtype=dtype,
                                                   platform=plat))(q))
        assert dots.count("dot_general") == (2 if plat == "cpu" else 6)  # the prompt's 2 left
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(out["cpu"], out["gpu"], atol=tol, rtol=tol)


def test_blockwise_lse_is_the_log_sum_exp():
    rng = np.random.default_rng(2)
    q, k, v = _rand(rng, 2, 30, KVH, 2, DH), _rand(rng, 2, 50, KVH, DH), _rand(rng, 2, 50, KVH, DH)
    qp = jnp.asarray(np.tile(np.arange(10, 40), (2, 1)), jnp.int32)
    kp = _left_padded([50, 20], 50)
    _, lse = blockwise_attention(q, k, v, qp, kp, block_q=8, block_k=16)
    s = np.einsum("gqkrd,gtkd->gqkrt", np.asarray(q), np.asarray(k))
    vis = (np.asarray(kp)[:, None, :] >= 0) & (np.asarray(kp)[:, None, :] <= np.asarray(qp)[..., None])
    s = np.where(vis[:, :, None, None, :], s, -np.inf)
    ref = np.log(np.exp(s).sum(-1))
    assert np.abs(np.asarray(lse) - ref).max() <= 1e-5


@pytest.mark.parametrize("left_pad", [False, True])
def test_splash_kernel_interpret_mode_equals_exact(left_pad):
    """The Pallas TPU splash kernel, run by the Pallas interpreter on CPU (forward and gradient).
    S = 256: one 256-wide tile (its shapes must be multiples of 128)."""
    rng = np.random.default_rng(3)
    S = 256
    q, k, v = _rand(rng, 2, S, H, DH), _rand(rng, 2, S, KVH, DH), _rand(rng, 2, S, KVH, DH)
    pos = _left_padded([S, 200] if left_pad else [S, S], S)

    def exact(q, k, v):
        return attend(q, pos, [Segment(k, v, pos)])

    def splash(q, k, v):
        return splash_attention(q * DH ** -0.5, k, v, pos, interpret=True)

    _check(exact, splash, (q, k, v))


def test_choose_impl_by_backend_and_shape():
    assert choose_impl("auto", 1, 8192, 2, False, "tpu") == "exact"  # decode
    assert choose_impl("auto", 512, 512, 1, True, "tpu") == "exact"  # short
    assert choose_impl("auto", 4096, 4096, 1, True, "cpu") == "blockwise"
    assert choose_impl("auto", 4096, 4096, 1, False, "tpu") == "splash"
    assert choose_impl("auto", 4100, 4100, 1, False, "tpu") == "blockwise"  # not 128-aligned
    assert choose_impl("auto", 4096, 8192, 2, False, "tpu") == "blockwise"  # prefill into a cache
    assert choose_impl("auto", 4096, 4096, 1, True, "gpu") == "cudnn"
    assert choose_impl("auto", 4096, 4096, 1, False, "gpu") == "blockwise"  # padding
    assert choose_impl("exact", 4096, 4096, 1, True, "tpu") == "exact"
    with pytest.raises(jse.JSEError, match="unknown attention implementation 'flash'"):
        choose_impl("flash", 8, 8, 1, True)
    with pytest.raises(jse.JSEError, match="unknown attention_impl"):
        jse.create_model(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=8,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1), attention_impl="flash")


CFG = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  eos_token_id=2)


def test_model_blockwise_equals_exact_left_padded():
    """The whole model (2 query blocks of 512): logits within 1e-5 with left padding."""
    model = jse.create_model(CFG, seed=0)
    rng = np.random.default_rng(4)
    S = 700
    toks = jnp.asarray(rng.integers(3, 61, (2, S)).astype(np.int32))
    mask = jnp.asarray(np.stack([np.ones(S), np.r_[np.zeros(100), np.ones(S - 100)]]), jnp.int32)
    ref = np.asarray(model(toks, attention_mask=mask))
    model.attention_impl = "blockwise"
    out = np.asarray(model(toks, attention_mask=mask))
    lowered = jax.jit(lambda m, t, a: m(t, attention_mask=a)).lower(model, toks, mask)
    assert att.attention_kernels(lowered) == ["blockwise"]
    assert np.abs(out - ref).max() <= 1e-5


def _train_memory(impl, S):
    """Compiled memory of loss + grad of a 1 x S training step (remat per layer)."""
    model = jse.create_model(CFG, seed=0, attention_impl=impl)
    model.remat = True
    g, params = nnx.split(model, nnx.Param)

    def loss(p, toks):
        logits = nnx.merge(g, p)(toks)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    toks = jax.ShapeDtypeStruct((1, S), jnp.int32)
    c = jax.jit(jax.grad(loss)).lower(params, toks).compile()
    return c.memory_analysis().temp_size_in_bytes


def test_long_training_step_does_not_hold_seq_squared_scores():
    """At S=2048 the exact path's f32 scores alone are 4 heads x S^2 x 4 B = 64 MiB; blockwise
    temporaries stay a fraction of that (measured ~5 MiB), and grow linearly in S."""
    exact = _train_memory("exact", 2048)
    block = _train_memory("blockwise", 2048)
    assert exact >= 4 * 2048 * 2048 * 4  # the [H, S, S] f32 scores are there
    assert block * 4 <= exact
    assert _train_memory("blockwise", 4096) <= 2.5 * block  # ~linear, not 4x
