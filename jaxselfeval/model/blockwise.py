"""Blockwise (online-softmax, "flash") attention in plain JAX: runs on every backend and never
materialises the [S, T] score matrix, in the forward or the backward pass.

Queries are cut into blocks of `block_q`, keys/values into blocks of `block_k`; a query block
scans the key blocks keeping a running max m, sum l and weighted values (Milakov & Gimelshein's
online softmax). The backward pass is a `jax.custom_vjp` that keeps only the output and the
log-sum-exp per query row ([S] numbers, not [S, T]) and recomputes each [block_q, block_k] tile
(FlashAttention-2's backward). A key/value block that no query of the query block can see (the
upper triangle of a causal mask, left padding) is skipped with `lax.cond`.

Visibility is by position, as in `attention.py`: key position kp is visible to a query at
position qp iff 0 <= kp <= qp (padding carries -1). That covers causal order, left padding and
a shared prompt (queries of N rows folded into one group that shares the group's keys).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG = -1e30


def _pad(x, axis, mult, value):
    n = x.shape[axis]
    extra = -n % mult
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _blocks(x, axis, size):
    """[..., n*size, ...] -> [n, ..., size, ...] (blocks on a new leading axis)."""
    shape = x.shape
    x = x.reshape(*shape[:axis], shape[axis] // size, size, *shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _unblock(x, axis):
    """Inverse of `_blocks` (the block axis is 0; `axis` is the position in the result)."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])


def _visible(qp, kp):
    """qp [G, bq], kp [G, bk] -> bool [G, 1, 1, bq, bk] (broadcast over kv heads, group)."""
    vis = (kp[:, None, :] >= 0) & (kp[:, None, :] <= qp[:, :, None])
    return vis[:, None, None]


def _any_visible(qp, kp):
    """Scalar: can any query of this block see any key of that block?"""
    return jnp.any((kp >= 0) & (kp <= jnp.max(qp)))


def _scores(qi, kj):
    """qi [G, bq, K, R, Dh], kj [G, bk, K, Dh] -> f32 [G, K, R, bq, bk]."""
    return jnp.einsum("gqkrd,gtkd->gkrqt", qi, kj, preferred_element_type=jnp.float32)


def _fori(n, body, init):
    """body(i, carry) for i in 0..n-1 as a `lax.while_loop`: unlike a scan, nothing in it can be
    stacked across iterations when the enclosing step is rematerialised and differentiated
    (a scan's position-only masks were hoisted into [nq, nk, bq, bk] residuals)."""
    def cond(c):
        return c[0] < n

    def step(c):
        return c[0] + 1, body(c[0], c[1])

    return jax.lax.while_loop(cond, step, (jnp.zeros((), jnp.int32), init))[1]


def _forward(q, k, v, qp, kp, bq, bk):
    """Blocked inputs -> (o f32 [nq, G, bq, K, R, Dh] normalised, lse f32 [nq, G, K, R, bq])."""
    cd = q.dtype
    nq, G, _, K, R, Dh = q.shape
    nk = k.shape[0]

    def q_block(i, out):
        qi, qpi = q[i], qp[i]

        def kv_block(j, carry):
            kj, vj, kpj = k[j], v[j], kp[j]

            def update(carry):
                m, l, acc = carry
                vis = _visible(qpi, kpj)
                s = jnp.where(vis, _scores(qi, kj), NEG)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                p = jnp.where(vis, jnp.exp(s - m_new[..., None]), 0.0)
                corr = jnp.exp(m - m_new)
                l = l * corr + jnp.sum(p, axis=-1)
                pv = jnp.einsum("gkrqt,gtkd->gqkrd", p.astype(cd), vj,
                                preferred_element_type=jnp.float32)
                acc = acc * jnp.moveaxis(corr, -1, 1)[..., None] + pv
                return m_new, l, acc

            return jax.lax.cond(_any_visible(qpi, kpj), update, lambda c: c, carry)

        init = (jnp.full((G, K, R, bq), NEG, jnp.float32), jnp.zeros((G, K, R, bq), jnp.float32),
                jnp.zeros((G, bq, K, R, Dh), jnp.float32))
        m, l, acc = _fori(nk, kv_block, init)
        o = acc / jnp.moveaxis(jnp.maximum(l, 1e-30), -1, 1)[..., None]
        lse = jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), NEG)
        return out[0].at[i].set(o), out[1].at[i].set(lse)

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros((nq, G, K, R, bq), jnp.float32))
    return _fori(nq, q_block, init)


def _backward(q, k, v, qp, kp, o, lse, do, dlse):
    """FlashAttention-2 backward over blocked inputs: dq, dk, dv (f32, blocked like the inputs).
    ds = p * (dp - D + dlse), D = sum(do * o) per query row: the lse's own cotangent enters
    as d lse / d s = p."""
    cd = q.dtype
    delta = jnp.moveaxis(jnp.sum(do * o, axis=-1), 2, -1)  # [nq, G, K, R, bq]
    do_c = do.astype(cd)
    nq, nk = q.shape[0], k.shape[0]

    def kv_block(j, out):
        kj, vj, kpj = k[j], v[j], kp[j]

        def q_block(i, carry):
            qi, doi, lsei, di, dli, qpi = q[i], do_c[i], lse[i], delta[i], dlse[i], qp[i]

            def grads(carry):
                dk, dv, dq = carry
                vis = _visible(qpi, kpj)
                s = _scores(qi, kj)
                p = jnp.where(vis, jnp.exp(s - lsei[..., None]), 0.0)  # [G, K, R, bq, bk]
                dv = dv + jnp.einsum("gkrqt,gqkrd->gtkd", p.astype(cd), doi,
                                     preferred_element_type=jnp.float32)
                dp = jnp.einsum("gqkrd,gtkd->gkrqt", doi, vj, preferred_element_type=jnp.float32)
                ds = (p * (dp - di[..., None] + dli[..., None])).astype(cd)
                dqi = jnp.einsum("gkrqt,gtkd->gqkrd", ds, kj, preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("gkrqt,gqkrd->gtkd", ds, qi,
                                     preferred_element_type=jnp.float32)
                return dk, dv, dq.at[i].add(dqi)

            return jax.lax.cond(_any_visible(qpi, kpj), grads, lambda c: c, carry)

        dq, dk_all, dv_all = out
        zeros = jnp.zeros(kj.shape, jnp.float32)
        dk, dv, dq = _fori(nq, q_block, (zeros, zeros, dq))
        return dq, dk_all.at[j].set(dk), dv_all.at[j].set(dv)

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32),
            jnp.zeros(v.shape, jnp.float32))
    return _fori(nk, kv_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _core(q, k, v, qp, kp, bq, bk):
    return _forward(q, k, v, qp, kp, bq, bk)


def _core_fwd(q, k, v, qp, kp, bq, bk):
    o, lse = _forward(q, k, v, qp, kp, bq, bk)
    return (o, lse), (q, k, v, qp, kp, o, lse)


def _core_bwd(bq, bk, res, cts):
    q, k, v, qp, kp, o, lse = res
    do, dlse = cts
    dq, dk, dv = _backward(q, k, v, qp, kp, o, lse, do, dlse)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_core.defvjp(_core_fwd, _core_bwd)


def blockwise_attention(q, k, v, q_pos, k_pos, *, block_q: int = 512, block_k: int = 512):
    """Softmax attention of grouped queries over one key/value segment, blockwise.

    q: [G, Sq, KVH, R, Dh] (pre-scaled, compute dtype; R = query heads per kv head, and Sq may
    fold N rows that share the group's keys); k, v: [G, T, KVH, Dh]; q_pos: [G, Sq] int32;
    k_pos: [G, T] int32 (-1 = padding / empty). Returns (o f32 [G, Sq, KVH, R, Dh], normalised;
    lse f32 [G, Sq, KVH, R], the log-sum-exp of the visible scores, -1e30 where none is
    visible, for merging segments). Differentiable in q, k, v with O(Sq + T) residuals.
    """
    Sq, T = q.shape[1], k.shape[1]
    bq, bk = min(block_q, Sq), min(block_k, T)
    k = k.astype(q.dtype)
    v = v.astype(q.dtype)
    qb = _blocks(_pad(q, 1, bq, 0), 1, bq)  # [nq, G, bq, KVH, R, Dh]
    qpb = _blocks(_pad(q_pos.astype(jnp.int32), 1, bq, -1), 1, bq)  # [nq, G, bq]
    kb = _blocks(_pad(k, 1, bk, 0), 1, bk)  # [nk, G, bk, KVH, Dh]
    vb = _blocks(_pad(v, 1, bk, 0), 1, bk)
    kpb = _blocks(_pad(k_pos.astype(jnp.int32), 1, bk, -1), 1, bk)  # [nk, G, bk]
    o, lse = _core(qb, kb, vb, qpb, kpb, bq, bk)
    o = _unblock(o, 1)[:, :Sq]
    lse = _unblock(jnp.moveaxis(lse, -1, 2), 1)[:, :Sq]
    return o, lse
