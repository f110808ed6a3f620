"""Sharded forward on 8 simulated CPU devices equals the unsharded one; mesh errors are clear."""

import jax
import numpy as np
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.sharding import batch_sharding, make_mesh, shard_model


@pytest.mark.parametrize("mesh_spec", ["fsdp=4,tensor=2", "data=2,fsdp=2,tensor=2"])
def test_sharded_forward_equals_unsharded(hf_models, mesh_spec):
    assert jax.device_count() == 8
    path = hf_models["theta5e5_gqa4_tied"][0]
    model = jse.load_pretrained(path)
    toks = np.random.default_rng(0).integers(3, model.config.vocab_size, (8, 13)).astype(np.int32)
    ref = np.asarray(model(toks))
    mesh = make_mesh(mesh_spec)
    sharded = jse.load_pretrained(path, mesh=mesh)  # sharded loading, slice by slice
    spec = sharded.wq[...].sharding.spec
    assert "tensor" in tuple(spec) and "fsdp" in tuple(spec)
    g, st = nnx.split(sharded)
    out = jax.jit(lambda st, t: nnx.merge(g, st)(t))(st, jax.device_put(toks, batch_sharding(mesh)))
    assert np.abs(np.asarray(out) - ref).max() <= 1e-4
    # placing an already loaded model gives the same parameters
    moved = shard_model(jse.load_pretrained(path), mesh)
    assert np.array_equal(np.asarray(moved.wq[...]), np.asarray(sharded.wq[...]))


def test_mesh_that_does_not_divide_devices():
    with pytest.raises(jse.JSEError, match="does not divide|multiply to 8"):
        make_mesh("fsdp=3")
    with pytest.raises(jse.JSEError, match="multiply to 8"):
        make_mesh("fsdp=4,tensor=4")
    with pytest.raises(jse.JSEError, match="unknown mesh axis"):
        make_mesh("model=8")
