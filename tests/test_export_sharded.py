"""Export of a model sharded over 8 simulated devices equals the single-device export."""

import jax

import jaxselfeval as jse
from jaxselfeval.sharding import make_mesh


def test_sharded_export_equals_single_device(hf_models, tmp_path):
    assert jax.device_count() == 8
    path = hf_models["llama3_gqa2_untied"][0]
    single = jse.save_pretrained(jse.load_pretrained(path), tmp_path / "single",
                                 max_shard_bytes=60_000)
    sharded_model = jse.load_pretrained(path, mesh=make_mesh("fsdp=4,tensor=2"))
    assert len(sharded_model.wq[...].sharding.device_set) == 8
    sharded = jse.save_pretrained(sharded_model, tmp_path / "sharded", max_shard_bytes=60_000)
    files = sorted(p.name for p in single.iterdir())
    assert files == sorted(p.name for p in sharded.iterdir())
    for f in files:
        assert (single / f).read_bytes() == (sharded / f).read_bytes(), f
