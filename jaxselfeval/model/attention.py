"""Grouped-query attention over several key/value *segments*, combined exactly.

A query row can attend to: a prompt cache shared by a group of rows (stored once per prompt), the
row's own cache, and the tokens of the current call. Each segment gives a partial softmax (running
max, sum, weighted values); `combine` merges them with log-sum-exp arithmetic, so the result equals
one softmax over the concatenation of all keys.

Visibility is by position: key slot with position `kp` is visible to query at position `qp` iff
`0 <= kp <= qp` (empty or padded slots carry position -1).

`attend` is the exact path (it builds the [S, T] scores: short shapes and decode). `attention`
picks an implementation (`IMPLS`) that gives the same result without [S, T] scores for long
sequences: `blockwise` (online softmax in plain JAX, every backend, `blockwise.py`), `splash`
(the Pallas TPU kernel) or `cudnn` (GPU), see `choose_impl`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxselfeval.backends import cpu
from jaxselfeval.model.blockwise import blockwise_attention
from jaxselfeval.model.kernels import cudnn_attention, splash_attention, splash_block

NEG = -1e30
IMPLS = ("auto", "exact", "blockwise", "splash", "cudnn")
# auto: the exact path while a query block's scores are this small (S * T per row and head);
# measured on CPU, the exact path is as fast as blockwise up to S = T = 1024 (bench train)
EXACT_MAX = 1024 * 1024
SCOPE = "jse_attention_{impl}_{S}x{T}"  # the named scope each attention call is traced under
_SCOPE_RE = re.compile(r"jse_attention_([a-z]+)_(\d+)x(\d+)")


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


def attend(q, q_pos, segments, *, compute_dtype=jnp.float32, platform: str | None = None):
    """Softmax attention of q over the union of `segments`.

    q: [B, S, H, Dh]; q_pos: [B, S] int32; each segment's group count must divide B.
    platform "cpu": a decode step's own segment runs `backends.cpu.partial_rowwise`.
    Returns [B, S, H, Dh] float32.
    """
    B, S, H, Dh = q.shape
    KVH = segments[0].k.shape[2]
    R = H // KVH
    qs = (q.astype(jnp.float32) * (Dh ** -0.5)).astype(compute_dtype)
    rowwise = (platform or jax.default_backend()) == "cpu"
    parts = []
    for seg in segments:
        G = seg.k.shape[0]
        N = B // G
        if S == 1 and G == B and rowwise:
            m, l, o = cpu.partial_rowwise(qs.reshape(B, KVH, R, Dh), seg.k, seg.v, seg.pos,
                                          q_pos[:, 0])
            parts.append((m, l, o))
            continue
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


# ----------------------------------------------------------------------------- dispatch
def attention_calls(lowered) -> list[tuple[str, int, int]]:
    """(implementation, S queries, T keys) of each distinct attention call in a lowered program
    (`jax.jit(f).lower(...)`), sorted: read off the named scope (`SCOPE`) of each call."""
    found = _SCOPE_RE.findall(lowered.as_text(debug_info=True))
    return sorted({(impl, int(S), int(T)) for impl, S, T in found})


def attention_kernels(lowered) -> list[str]:
    """The attention implementations a lowered program runs, sorted."""
    return sorted({impl for impl, _, _ in attention_calls(lowered)})


def choose_impl(impl: str, S: int, T: int, n_segments: int, contiguous: bool,
                backend: str | None = None) -> str:
    """The implementation an `attention` call runs. S: queries per row; T: keys over all segments;
    contiguous: positions are statically 0..S-1 (no padding).

    auto: exact when S == 1 (decode) or S * T <= EXACT_MAX; else on TPU splash, on GPU cudnn
    (when applicable), elsewhere blockwise. The kernels cover one causal self segment only
    (splash: S a multiple of 128; cudnn: no padding); otherwise exact (short shapes, decode)
    or blockwise runs instead.
    """
    if impl not in IMPLS:
        from jaxselfeval.errors import JSEError

        raise JSEError(f"unknown attention implementation '{impl}': use one of {', '.join(IMPLS)}")
    short = S == 1 or S * T <= EXACT_MAX
    if impl == "auto":
        if short:
            return "exact"
        backend = backend or jax.default_backend()
        impl = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(backend, "blockwise")
    if impl == "splash" and (n_segments != 1 or splash_block(S) is None):
        return "exact" if short else "blockwise"
    if impl == "cudnn" and (n_segments != 1 or not contiguous):
        return "exact" if short else "blockwise"
    return impl


def _blockwise(qs, q_pos, segments):
    """qs: [B, S, H, Dh] pre-scaled; every segment blockwise, merged by log-sum-exp."""
    B, S, H, Dh = qs.shape
    KVH = segments[0].k.shape[2]
    R = H // KVH
    outs, lses = [], []
    for seg in segments:
        G = seg.k.shape[0]
        N = B // G
        o, lse = blockwise_attention(qs.reshape(G, N * S, KVH, R, Dh), seg.k, seg.v,
                                     q_pos.reshape(G, N * S), seg.pos)
        outs.append(o.reshape(B, S, KVH, R, Dh))
        lses.append(lse.reshape(B, S, KVH, R))
    if len(outs) == 1:
        return outs[0].reshape(B, S, H, Dh)
    top = jax.lax.stop_gradient(jnp.max(jnp.stack(lses), axis=0))
    ws = [jnp.exp(lse - top) for lse in lses]
    num = sum(o * w[..., None] for o, w in zip(outs, ws))
    out = num / sum(ws)[..., None]
    return out.reshape(B, S, H, Dh)


def attention(q, q_pos, segments, *, compute_dtype=jnp.float32, impl: str = "auto",
              contiguous: bool = False, platform: str | None = None):
    """`attend`'s result (softmax of q over the union of `segments`) by the implementation
    `choose_impl` picks for `platform` (None: JAX's default backend). q: [B, S, H, Dh];
    q_pos: [B, S] int32. Returns f32 [B, S, H, Dh]."""
    S, T = q.shape[1], sum(seg.k.shape[1] for seg in segments)
    used = choose_impl(impl, S, T, len(segments), contiguous, platform)
    with jax.named_scope(SCOPE.format(impl=used, S=S, T=T)):
        return _attention(used, q, q_pos, segments, compute_dtype, platform)


def _attention(used, q, q_pos, segments, compute_dtype, platform):
    """`attention` by implementation `used`."""
    Dh = q.shape[-1]
    if used == "exact":
        return attend(q, q_pos, segments, compute_dtype=compute_dtype, platform=platform)
    qs = (q.astype(jnp.float32) * (Dh ** -0.5)).astype(compute_dtype)
    if used == "splash":
        return splash_attention(qs, segments[0].k, segments[0].v, q_pos)
    if used == "cudnn":
        return cudnn_attention(qs, segments[0].k, segments[0].v)
    return _blockwise(qs, q_pos, segments)
