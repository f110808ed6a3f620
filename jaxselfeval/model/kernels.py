"""Fused attention kernels shipped with JAX, for one causal self-attention segment:

- TPU: the Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`),
  causal mask + segment ids (real tokens 1, left padding 0), run per shard under `shard_map`
  (a Pallas call is not partitioned by XLA: batch over the data/fsdp axes, heads over tensor).
- GPU: `jax.nn.dot_product_attention(implementation="cudnn", is_causal=True)`, only when the
  positions are 0..S-1 (no padding: cuDNN's masks are lengths, not left padding).

Both take q pre-scaled by 1/sqrt(head_dim): q [B, S, H, Dh], k, v [B, S, KVH, Dh], and return
f32 [B, S, H, Dh]; rows at position -1 (padding) are 0, as in the exact path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxselfeval.model.axes import batch_axis

SPLASH_BLOCKS = (512, 256, 128)


def splash_block(S: int) -> int | None:
    """The splash tile for sequence length S (None: S is not a multiple of 128)."""
    return next((b for b in SPLASH_BLOCKS if S % b == 0), None)


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, S: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b = splash_block(S)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                          block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sm.MultiHeadMask([sm.CausalMask((S, S))] * heads)
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash_local(q, k, v, pos, interpret):
    """One shard: q [b, S, h, Dh], k/v [b, S, kvh, Dh], pos [b, S] -> [b, S, h, Dh] f32."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    kern = _splash_kernel(q.shape[2], q.shape[1], interpret)

    def one(q, k, v, seg):
        ids = sk.SegmentIds(q=seg, kv=seg)
        t = (1, 0, 2)  # [S, heads, Dh] -> [heads, S, Dh]
        o = kern(q.transpose(t), k.transpose(t), v.transpose(t), segment_ids=ids)
        return o.transpose(t)

    seg = (pos >= 0).astype(jnp.int32)
    o = jax.vmap(one)(q, k, v, seg).astype(jnp.float32)
    return jnp.where((pos >= 0)[..., None, None], o, 0.0)


def _mesh_specs(q, k):
    """shard_map specs under the mesh set with `jax.set_mesh`: batch over (data, fsdp), heads over
    tensor, where those axes divide; None without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(s == 1 for s in mesh.shape.values()):
        return None
    b = batch_axis(mesh, q.shape[0])
    t = mesh.shape.get("tensor", 1)
    h = "tensor" if t > 1 and q.shape[2] % t == 0 and k.shape[2] % t == 0 else None
    return P(b, None, h, None), P(b, None)


def splash_attention(q, k, v, pos, *, interpret: bool = False):
    """Causal self-attention with the Pallas TPU splash kernel (`interpret=True` runs it on CPU).

    q: [B, S, H, Dh] pre-scaled; k, v: [B, S, KVH, Dh]; pos: [B, S] int32, -1 = (left) padding,
    increasing along S for real tokens. S must be a multiple of 128. Returns f32 [B, S, H, Dh].
    """
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    specs = _mesh_specs(q, k)
    f = functools.partial(_splash_local, interpret=interpret)
    if specs is None:
        return f(q, k, v, pos)
    x, p = specs
    return jax.shard_map(f, in_specs=(x, x, x, p), out_specs=x, check_vma=False)(q, k, v, pos)


def cudnn_attention(q, k, v):
    """Causal self-attention with cuDNN's fused kernel, positions 0..S-1 (no padding).
    q: [B, S, H, Dh] pre-scaled; k, v: [B, S, KVH, Dh]. Returns f32 [B, S, H, Dh]."""
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    o = jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True, implementation="cudnn")
    return o.astype(jnp.float32)
