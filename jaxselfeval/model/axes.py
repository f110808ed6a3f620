"""Logical axes: the names parameters and caches carry (`logical_axes` metadata), the rules
mapping them to the mesh axes (data, fsdp, tensor), and the PartitionSpec of one array.

The model's own layer: it imports only jax, so the model (e.g. `cache_shardings`) can place its
arrays without importing `jaxselfeval.sharding`, which builds meshes and places whole models.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "head_dim": None,
    "norm": None,
    "seq": None,
    "lora_rank": None,
    "vocab_rows": None,  # an adapter's few vocabulary rows (`Adapter.vocab_rows`)
}


def batch_axis(mesh, size: int | None = None):
    """The PartitionSpec entry of a leading batch dim of `size` on `mesh` (concrete or abstract):
    the axes of RULES["batch"] (data x fsdp) larger than 1; None when there are none or they do
    not divide `size` (None: any size)."""
    axes = tuple(a for a in RULES["batch"] if mesh.shape.get(a, 1) > 1)
    if not axes or (size is not None and size % math.prod(mesh.shape[a] for a in axes)):
        return None
    return axes if len(axes) > 1 else axes[0]


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                 rules: Mapping = RULES) -> PartitionSpec:
    """PartitionSpec for a tensor of `shape` with logical `axes`; undividable dims replicate."""
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape):
        target = rules.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(t for t in targets if t in mesh.shape and mesh.shape[t] > 1 and t not in used)
        size = math.prod(mesh.shape[t] for t in targets)
        if not targets or dim % size:
            if targets:
                log.debug("replicating axis %s (size %d) over %s", name, dim, targets)
            out.append(None)
            continue
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


def shard_batch(x):
    """Constrain activations [B, ...] to be split on B over the (data, fsdp) axes of the mesh set
    with `jax.set_mesh` (FSDP then gathers weights, not activations). No-op without a mesh or
    when B does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    axis = None if mesh.empty else batch_axis(mesh, x.shape[0])
    return x if axis is None else jax.lax.with_sharding_constraint(x, PartitionSpec(axis))
