"""Everything tuned for XLA:CPU, the platform we test and demo on (not the one we tune for).

The model and the sampler call into this module only when the platform they trace for is "cpu"
(`AttentionContext.platform`, set once by an Engine); on GPU and TPU none of it runs.

- `matmul_t`: a product against weights stored [out, in] with few rows, run as w @ x^T.
- `partial_rowwise`: a decode step's attention to its own cache without XLA:CPU's transposed
  copy of the cache.
- `DecodeWeights` / `decode_weights`: the layers as separate arrays, q/k/v and gate/up fused,
  stored transposed, for the few rows of a decode step (XLA:CPU copies each layer's slice out
  of stacked [L, ...] weights inside a scan).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Up to this many rows (batch x seq) a matmul against weights stored transposed runs as
# w^T @ x^T. Measured on a 2-core AVX2 EPYC (medians of alternating calls, f32 GFLOP/s):
# [16, 768] x [768, 2048] 62 -> 108, x [768, 32000] 57 -> 98; at 128 rows and more it is no faster
SMALL_ROWS = 64

# Models whose layer weights are at least this large sample with `decode_weights`: in the scan
# XLA:CPU copies each layer's slice out of the stacked arrays, a quarter of small_100m's decode
# step (179 -> 131 ms in f32, 181 -> 137 ms in bf16); the tiny model's step is bound by op count
# instead, and unrolled it compiled twice as long and ran slower (11 -> 15 ms)
PER_LAYER_MIN_BYTES = 64 << 20


def matmul_t(x, wt, cd):
    """x [..., in] @ wt [out, in]^T -> f32 [..., out]. With at most SMALL_ROWS rows it computes
    wt @ x^T [out, rows] and transposes that: XLA:CPU runs a product with the long side on the
    left about twice as fast (f32 and bf16). The barrier keeps XLA from folding the transpose
    back into the product, which would undo the gain."""
    x, w = x.astype(cd), wt.astype(cd)
    rows = x.size // x.shape[-1]
    if rows > SMALL_ROWS:
        return jnp.einsum("...i,oi->...o", x, w, preferred_element_type=jnp.float32)
    y = jax.lax.dot_general(w, x.reshape(rows, -1), (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(y).T.reshape(*x.shape[:-1], w.shape[0])


def partial_rowwise(q, k, v, k_pos, q_pos):
    """One query per row against the row's own keys (a decode step's own cache and current
    token): q [B, KVH, R, Dh] (pre-scaled), k, v [B, T, KVH, Dh], k_pos [B, T], q_pos [B].
    Products and sums in f32 in the keys' own layout: XLA:CPU otherwise copies the cache
    transposed for a [R, T] dot per row and head (a small_100m f32 decode step 79 -> 69 ms).
    Returns the partial softmax (m, l [B, KVH, R, 1], o [B, 1, KVH, R, Dh])."""
    k = k.astype(jnp.float32)
    v = v.astype(jnp.float32)
    s = jnp.sum(q[:, None].astype(jnp.float32) * k[:, :, :, None, :], axis=-1)  # [B, T, KVH, R]
    vis = ((k_pos >= 0) & (k_pos <= q_pos[:, None]))[:, :, None, None]  # [B, T, 1, 1]
    s = jnp.where(vis, s, -1e30)
    m = jax.lax.stop_gradient(jnp.max(s, axis=1))  # [B, KVH, R]
    p = jnp.where(vis, jnp.exp(s - m[:, None]), 0.0)
    l = jnp.sum(p, axis=1)
    o = jnp.sum(p[..., None] * v[:, :, :, None, :], axis=1)  # [B, KVH, R, Dh]
    return m[..., None], l[..., None], o[:, None]


class FusedBlock(NamedTuple):
    """One layer's weights for a CPU decode step, every matrix stored [out, in]:
    wqkv_t [(H + 2 K) Dh, D], wo_t [D, H Dh], w_gu_t [2 F, D], w_down_t [D, F]; norms [D].
    The block protocol of `jaxselfeval.model.block` (q/k/v and gate/up are one product each)."""

    attn_norm: jax.Array
    mlp_norm: jax.Array
    wqkv_t: jax.Array
    wo_t: jax.Array
    w_gu_t: jax.Array
    w_down_t: jax.Array

    def qkv(self, h, heads: int, kv_heads: int, head_dim: int, cd):
        B, S = h.shape[:2]
        qkv = matmul_t(h, self.wqkv_t, cd)
        H, K, Dh = heads, kv_heads, head_dim
        return (qkv[..., :H * Dh].reshape(B, S, H, Dh),
                qkv[..., H * Dh:(H + K) * Dh].reshape(B, S, K, Dh),
                qkv[..., (H + K) * Dh:].reshape(B, S, K, Dh))

    def out(self, a, cd):
        return matmul_t(a.reshape(*a.shape[:2], -1), self.wo_t, cd)

    def gate_up(self, h, cd):
        gu = matmul_t(h, self.w_gu_t, cd)
        F = gu.shape[-1] // 2
        return gu[..., :F], gu[..., F:]

    def down(self, x, cd):
        return matmul_t(x, self.w_down_t, cd)


class DecodeWeights(NamedTuple):
    """The layers as L `FusedBlock`s (separate arrays), and the LM head [V, D] (the tied
    embedding, or an untied head transposed)."""

    blocks: tuple
    head_t: jax.Array


def decode_weights(stacked: dict, head_t) -> DecodeWeights:
    """Copies of the stacked [L, ...] layer weights (attn_norm, wq [L, D, H, Dh], wk, wv,
    wo [L, H, Dh, D], mlp_norm, w_gate [L, D, F], w_up, w_down [L, F, D]) as `DecodeWeights`:
    five products a layer become four, each wider, with the long side on the left. head_t: the
    LM head as [V, D]."""
    L = stacked["wq"].shape[0]

    def t(parts, i):  # [out, in]: each part flattened to [in, out] and concatenated on out
        mats = [stacked[n][i].reshape(-1, stacked[n].shape[-1]) if n == "wo"
                else stacked[n][i].reshape(stacked[n].shape[1], -1) for n in parts]
        return jnp.concatenate(mats, -1).T

    blocks = tuple(FusedBlock(jnp.array(stacked["attn_norm"][i], copy=True),
                              jnp.array(stacked["mlp_norm"][i], copy=True),
                              t(("wq", "wk", "wv"), i), t(("wo",), i),
                              t(("w_gate", "w_up"), i), t(("w_down",), i)) for i in range(L))
    return DecodeWeights(blocks, head_t)


def wants_decode_weights(layer_bytes: int, has_adapter: bool, sharded: bool) -> bool:
    """Whether an Engine on one CPU device decodes with `decode_weights` (a copy of the layer
    weights): for a plain model whose layers reach PER_LAYER_MIN_BYTES."""
    return not sharded and not has_adapter and layer_bytes >= PER_LAYER_MIN_BYTES
