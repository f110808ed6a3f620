"""Grouped-query attention over several key/value *segments*, combined exactly.

A query row can attend to: a prompt cache shared by a group of rows (stored once per prompt), the
row's own cache, and the tokens of the current call. Each segment gives a partial softmax (running
max, sum, weighted values); `combine` merges them with log-sum-exp arithmetic, so the result equals
one softmax over the concatenation of all keys.

Visibility is by position: key slot with position `kp` is visible to query at position `qp` iff
`0 <= kp <= qp` (empty or padded slots carry position -1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG = -1e30


class Segment(NamedTuple):
    """Keys/values for `groups` prompts; rows of the query batch map to groups in order.

    k, v: [groups, T, kv_heads, head_dim]; pos: [groups, T] int32 (-1 = empty).
    `causal_self`: the segment is the current tokens themselves (mask by order only via pos).
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array


def _partial(q, seg: Segment, q_pos, compute_dtype):
    """q: [G, N, S, KVH, R, Dh] (pre-scaled); q_pos: [G, N, S]. Returns (m, l, o) partial softmax."""
    k = seg.k.astype(compute_dtype)
    v = seg.v.astype(compute_dtype)
    s = jnp.einsum("gnskrd,gtkd->gnkrst", q, k, preferred_element_type=jnp.float32)
    kp = seg.pos[:, None, None, :]  # [G, 1, 1, T]
    vis = (kp >= 0) & (kp <= q_pos[..., None])  # [G, N, S, T]
    vis = vis[:, :, None, None, :, :]  # [G, N, 1, 1, S, T]
    s = jnp.where(vis, s, NEG)
    # the softmax is invariant to the shift: no gradient through the running max (exact, cheaper)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1))  # [G, N, KVH, R, S]
    p = jnp.where(vis, jnp.exp(s - m[..., None]), 0.0)
    l = jnp.sum(p, axis=-1)
    o = jnp.einsum("gnkrst,gtkd->gnskrd", p.astype(compute_dtype), v,
                   preferred_element_type=jnp.float32)
    return m, l, o


def attend(q, q_pos, segments, *, compute_dtype=jnp.float32):
    """Softmax attention of q over the union of `segments`.

    q: [B, S, H, Dh]; q_pos: [B, S] int32; each segment's group count must divide B.
    Returns [B, S, H, Dh] float32.
    """
    B, S, H, Dh = q.shape
    KVH = segments[0].k.shape[2]
    R = H // KVH
    qs = (q.astype(jnp.float32) * (Dh ** -0.5)).astype(compute_dtype)
    parts = []
    for seg in segments:
        G = seg.k.shape[0]
        N = B // G
        qg = qs.reshape(G, N, S, KVH, R, Dh)
        m, l, o = _partial(qg, seg, q_pos.reshape(G, N, S), compute_dtype)
        parts.append((m.reshape(B, KVH, R, S), l.reshape(B, KVH, R, S), o.reshape(B, S, KVH, R, Dh)))
    if len(parts) == 1:  # one segment: plain softmax
        _, l, o = parts[0]
        out = o / jnp.transpose(jnp.maximum(l, 1e-30), (0, 3, 1, 2))[..., None]
        return out.reshape(B, S, H, Dh)
    m_all = parts[0][0]
    for m, _, _ in parts[1:]:
        m_all = jnp.maximum(m_all, m)
    num = 0.0
    den = 0.0
    for m, l, o in parts:
        w = jnp.exp(m - m_all)  # [B, KVH, R, S]
        den = den + l * w
        num = num + o * jnp.transpose(w, (0, 3, 1, 2))[..., None]
    den = jnp.maximum(den, 1e-30)
    out = num / jnp.transpose(den, (0, 3, 1, 2))[..., None]
    return out.reshape(B, S, H, Dh)
