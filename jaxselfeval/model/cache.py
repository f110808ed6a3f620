"""KV cache: a pytree the forward pass reads as a segment and writes at a slot index."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from jaxselfeval.model.axes import logical_spec
from jaxselfeval.model.config import LlamaConfig


class KVCache(NamedTuple):
    """k, v: [layers, batch, max_len, kv_heads, head_dim]; pos: [batch, max_len] int32 (-1 = empty);
    index: int32 scalar, the next slot written (all rows write the same slot; rows that are
    padding or finished write position -1, which no query can see)."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    index: jax.Array

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in (self.k, self.v, self.pos))

    def window(self, slots: int) -> "KVCache":
        """The first `slots` slots (a static slice): every slot written so far when
        `index <= slots`, the rest being empty (position -1) and invisible to every query."""
        return KVCache(self.k[:, :, :slots], self.v[:, :, :slots], self.pos[:, :slots], self.index)

    def take(self, rows) -> "KVCache":
        """Gather rows (e.g. survivors of pruning). rows: int32 [new_batch]."""
        return KVCache(self.k[:, rows], self.v[:, rows], self.pos[rows], jnp.array(self.index))


CACHE_AXES = KVCache(("layers", "batch", "seq", "kv_heads", "head_dim"),
                     ("layers", "batch", "seq", "kv_heads", "head_dim"), ("batch", "seq"), ())


def cache_shardings(cfg: LlamaConfig, batch: int, max_len: int, mesh) -> KVCache:
    """NamedSharding of each cache array on `mesh` by its logical axes (rows over data x fsdp,
    kv heads over tensor; a dimension an axis does not divide is replicated)."""
    kv = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    shapes = KVCache(kv, kv, (batch, max_len), ())
    return KVCache(*(NamedSharding(mesh, logical_spec(a, s, mesh))
                     for a, s in zip(CACHE_AXES, shapes)))


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=jnp.bfloat16,
               mesh=None) -> KVCache:
    """An empty cache for `batch` rows of `max_len` slots, made by one compiled call (eagerly it
    was four dispatches, a millisecond or two of a small model's prefill on a CPU); with a mesh,
    each device allocates only its slice (`cache_shardings`)."""
    return _init(cfg, batch, max_len, jnp.dtype(dtype), mesh)()


def _empty(cfg: LlamaConfig, batch: int, max_len: int, dtype) -> KVCache:
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        pos=jnp.full((batch, max_len), -1, jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


@functools.lru_cache(maxsize=64)
def _init(cfg, batch, max_len, dtype, mesh):
    """The jitted constructor of an empty cache (one compile per shape, dtype and mesh)."""
    shardings = None if mesh is None else cache_shardings(cfg, batch, max_len, mesh)
    return jax.jit(lambda: _empty(cfg, batch, max_len, dtype), out_shardings=shardings)
