"""Device meshes and placing a model on them by its logical axes.

Every parameter carries `logical_axes` metadata (e.g. ("layers", "embed", "q_heads", "head_dim")).
`RULES` (from `jaxselfeval.model.axes`, re-exported here) maps a logical axis to mesh axes; a
dimension that a mesh axis does not divide evenly is replicated instead (logged), so small test
models shard on any mesh. Loading a model onto a mesh is `jaxselfeval.hf_io.load_for_sampling`.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxselfeval.errors import JSEError
from jaxselfeval.model.axes import MESH_AXES, RULES, batch_axis, logical_spec  # noqa: F401 (public here too)

log = logging.getLogger(__name__)


def parse_mesh(spec: str | Mapping[str, int] | None) -> dict[str, int]:
    """'fsdp=4,tensor=2' or a mapping -> {axis: size}; unnamed axes get 1, one axis may be -1."""
    if spec is None or spec == "":
        return {"data": 1, "fsdp": -1, "tensor": 1}
    if isinstance(spec, str):
        d = {}
        for part in spec.split(","):
            if "=" not in part:
                raise JSEError(f"bad mesh '{spec}': write axes as name=size, e.g. fsdp=4,tensor=2")
            k, v = part.split("=", 1)
            try:
                d[k.strip()] = int(v)
            except ValueError:
                raise JSEError(f"bad mesh size '{v}' for axis '{k}': must be an integer") from None
        spec = d
    out = {a: 1 for a in MESH_AXES}
    for k, v in spec.items():
        if k not in MESH_AXES:
            raise JSEError(f"unknown mesh axis '{k}': use {', '.join(MESH_AXES)}")
        out[k] = int(v)
    return out


def make_mesh(spec: str | Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor), Auto axis types. `spec` e.g. 'fsdp=4,tensor=2'."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh(spec)
    n = len(devices)
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise JSEError("only one mesh axis may be -1 (fill the remaining devices)")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n % fixed:
            raise JSEError(f"mesh {sizes} does not divide the {n} devices: make the product divide {n}")
        sizes[free[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise JSEError(
            f"mesh {sizes} has {math.prod(sizes.values())} devices but {n} are available: "
            f"make the axis sizes multiply to {n}"
        )
    # topology-aware device order on TPU/GPU slices; Auto axes (jax 0.10 defaults to Explicit)
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), (AxisType.Auto,) * len(sizes),
                         devices=devices)


def state_shardings(state, mesh: Mesh, rules: Mapping = RULES):
    """NamedSharding for every Variable in an nnx State (by its `logical_axes` metadata)."""

    def one(v):
        axes = v.get_metadata().get("logical_axes") if isinstance(v, nnx.Variable) else None
        shape = v.shape if hasattr(v, "shape") else v[...].shape
        if axes is None:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, logical_spec(axes, shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model, mesh: Mesh, rules: Mapping = RULES):
    """Place every parameter of `model` on `mesh` by its logical axes (in place); returns model."""
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules)
    state = jax.tree.map(lambda v, s: v.replace(jax.device_put(v[...], s)), state, shardings,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
    nnx.update(model, state)
    return model


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shard the leading (batch) axis over data x fsdp (any rank >= 1)."""
    return NamedSharding(mesh, PartitionSpec(batch_axis(mesh)))


def local_mesh(spec: str | Mapping[str, int] | None) -> Mesh | None:
    """A mesh over this process's own devices for sampling, or None (one device) when `spec` is
    empty. Each host samples its own prompts (data build and eval split work by host), so the
    model is sharded only across the chips of one host, e.g. 'tensor=4' or 'fsdp=8'."""
    if spec is None or spec == "" or spec == {}:
        return None
    mesh = make_mesh(spec, jax.local_devices())
    log.info("sampling on %d devices of this host, mesh %s", mesh.size, dict(mesh.shape))
    return mesh

