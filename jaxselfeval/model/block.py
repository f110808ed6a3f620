"""The decoder block, a pure function of its weights: `decoder_block(w, x, rope, kv, cfg)`.

`w` is one layer's weights behind four products (`qkv`, `out`, `gate_up`, `down`) and two norms:
`StackedBlock` (a slice of the model's stacked [L, ...] weights, plus the adapter's low-rank terms
when one is attached), or another layout with the same methods (`backends.cpu.FusedBlock`). The
block does not know which; the caller folds blocks over the layers as a scan or unrolled.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxselfeval.model.attention import Segment, attention
from jaxselfeval.model.axes import shard_batch
from jaxselfeval.model.rope import apply_rope


def rms_norm(x, w, eps):
    """x: [..., D] -> f32 normalised, times weight (HF order: normalise in f32, cast, scale)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w.astype(jnp.float32) * xf


def matmul(x, w, cd, in_dims: int = 1):
    """x [B, S, *in] @ w [*in, *out] -> f32 [B, S, *out], as ONE 2-D matmul [B*S, in] x [in, out]
    in `cd` with f32 accumulation (XLA:CPU runs the weight gradient of a 2-D matmul ~2x faster
    than that of the same contraction written over batch and sequence axes)."""
    B, S = x.shape[:2]
    w_in, w_out = w.shape[:in_dims], w.shape[in_dims:]
    k = 1
    for d in w_in:
        k *= d
    y = jnp.dot(x.astype(cd).reshape(B * S, k), w.astype(cd).reshape(k, -1),
                preferred_element_type=jnp.float32)
    return y.reshape(B, S, *w_out)


class StackedBlock:
    """One layer of the stacked weights `p` (name -> this layer's slice; "lora": the adapter's
    slice) and the adapter that reads it (or None)."""

    def __init__(self, p: dict, adapter=None):
        self.p, self.adapter = p, adapter
        self.attn_norm, self.mlp_norm = p["attn_norm"], p["mlp_norm"]

    def _proj(self, name, h, cd, in_dims=1):
        y = matmul(h, self.p[name], cd, in_dims)
        if self.adapter is not None and name in self.p.get("lora", {}):
            y = y + self.adapter.delta(name, h, self.p["lora"][name], cd, in_dims)
        return y

    def qkv(self, h, heads, kv_heads, head_dim, cd):
        return tuple(self._proj(n, h, cd) for n in ("wq", "wk", "wv"))

    def out(self, a, cd):
        return self._proj("wo", a, cd, in_dims=2)

    def gate_up(self, h, cd):
        return self._proj("w_gate", h, cd), self._proj("w_up", h, cd)

    def down(self, x, cd):
        return self._proj("w_down", x, cd)


class Rope(NamedTuple):
    """cos, sin f32 [B, S, head_dim / 2] at the query positions."""

    cos: jax.Array
    sin: jax.Array


class LayerKV(NamedTuple):
    """What one layer attends to besides its own tokens: the prefix's and the own cache's
    keys / values of this layer ([G or B, T, kv_heads, head_dim]) and their positions."""

    prefix: Segment | None
    cache: Segment | None


def decoder_block(w, x, rope: Rope, positions, kv: LayerKV, cfg, *, cd, impl: str,
                  platform: str, contiguous: bool, kv_dtype, last: bool = False):
    """x f32 [B, S, D] -> (x f32 [B, S or 1, D], (k, v) [B, S, kv_heads, head_dim] of this
    call's tokens). last: only the last position's output is read after this block (its
    query, residual and MLP alone: every position's keys and values are still returned)."""
    x = shard_batch(x)
    h = rms_norm(x, w.attn_norm, cfg.rms_norm_eps).astype(cd)
    q, k, v = w.qkv(h, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cd)
    q, k = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
    k, v = k.astype(kv_dtype), v.astype(kv_dtype)
    q_pos = positions
    if last:
        q, q_pos, x = q[:, -1:], positions[:, -1:], x[:, -1:]
    segs = [s for s in (kv.prefix, kv.cache) if s is not None] + [Segment(k, v, positions)]
    a = attention(q, q_pos, segs, compute_dtype=cd, impl=impl, platform=platform,
                  contiguous=contiguous and not last)
    x = x + w.out(a.astype(cd), cd)
    h = rms_norm(x, w.mlp_norm, cfg.rms_norm_eps).astype(cd)
    g, u = w.gate_up(h, cd)
    x = x + w.down((jax.nn.silu(g) * u).astype(cd), cd)
    return x, (k, v)
