"""What one forward pass attends to and writes: the attention context.

A forward runs `tokens` [B, S] at `positions` and attends, by position, to up to three key/value
segments: a `prefix` cache of G prompts shared by B / G consecutive rows each (read only), the
rows' own `cache`, and the current tokens themselves. This object carries that choice, so the
model's forward takes nothing else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxselfeval.model.cache import KVCache


@struct.dataclass
class AttentionContext:
    """positions: int32 [B, S] (-1 = padding, invisible), or None: 0..S-1, no padding.
    prefix: a shared prompt cache (G rows), read only. cache: the rows' own cache.
    read_cache: False when `cache` is known to be empty (a prefill): written, not attended (no
    [S, T] scores against empty slots). write: store this call's keys / values at slots
    [cache.index, cache.index + S) and return the new cache. last_only: only the last
    position's hidden state is wanted (its query, residual and MLP alone in the last layer).
    platform: the platform kernels are chosen for ("cpu", "gpu", "tpu"; None: the model's
    `platform`, else JAX's default backend); an Engine sets it once."""

    positions: jax.Array | None = None
    prefix: KVCache | None = None
    cache: KVCache | None = None
    read_cache: bool = struct.field(pytree_node=False, default=True)
    write: bool = struct.field(pytree_node=False, default=True)
    last_only: bool = struct.field(pytree_node=False, default=False)
    platform: str | None = struct.field(pytree_node=False, default=None)

    def resolved_positions(self, shape) -> tuple[jax.Array, bool]:
        """(positions int32 [B, S] for a call of `shape` (B, S), contiguous: they are statically
        0..S-1 and nothing but the call's own tokens is attended, so a fused kernel needs no
        mask)."""
        if self.positions is None:
            B, S = shape
            pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
            return pos, self.prefix is None and self.cache is None
        return self.positions.astype(jnp.int32), False
