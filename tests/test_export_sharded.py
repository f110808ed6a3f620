"""Streaming export: a model sharded over 8 simulated devices exports byte-identical safetensors
to the single-device export; the writer holds one tensor on the host at a time and writes the
same bytes as safetensors' own writer."""

import gc
import weakref

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import communicate_all
from safetensors.numpy import save_file as st_save_file

import jaxselfeval as jse
import jaxselfeval.hf_io as hf_io
from jaxselfeval.sharding import make_mesh


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_sharded_export_equals_single_device(hf_models, tmp_path, dtype):
    assert jax.device_count() == 8
    path = hf_models["llama3_gqa2_untied"][0]
    single = jse.save_pretrained(jse.load_pretrained(path), tmp_path / "single",
                                 max_shard_bytes=60_000, dtype=dtype)
    sharded_model = jse.load_pretrained(path, mesh=make_mesh("fsdp=4,tensor=2"))
    assert len(sharded_model.wq[...].sharding.device_set) == 8
    sharded = jse.save_pretrained(sharded_model, tmp_path / "sharded", max_shard_bytes=60_000,
                                  dtype=dtype)
    files = sorted(p.name for p in single.iterdir())
    assert "model.safetensors.index.json" in files and len(files) > 3
    assert files == sorted(p.name for p in sharded.iterdir())
    for f in files:
        assert (single / f).read_bytes() == (sharded / f).read_bytes(), f


class _Tracked(np.ndarray):
    """An ndarray that can be weakly referenced (to see when the writer drops it)."""


def test_export_holds_one_tensor_at_a_time(hf_models, tmp_path, monkeypatch):
    model = jse.load_pretrained(hf_models["theta5e5_gqa4_tied"][0],
                                mesh=make_mesh("fsdp=4,tensor=2"))
    live, calls = [], []
    orig = hf_io._Lazy.get

    def get(self):
        gc.collect()
        assert all(r() is None for r in live), "a previous tensor is still on the host"
        a = orig(self).view(_Tracked)
        live.append(weakref.ref(a))
        calls.append(a.nbytes)
        return a

    monkeypatch.setattr(hf_io._Lazy, "get", get)
    out = jse.save_pretrained(model, tmp_path / "out")  # one file: every tensor streamed
    L = model.config.num_hidden_layers
    assert len(calls) == 1 + 9 * L + 1  # embed, 9 per layer, final norm (tied: no lm_head)
    ref = jse.load_pretrained(out)
    assert np.array_equal(np.asarray(ref.wo[...]), np.asarray(model.wo[...]))


@pytest.mark.parametrize("dt", [np.float32, ml_dtypes.bfloat16, np.float16])
def test_streaming_writer_matches_safetensors(tmp_path, dt):
    rng = np.random.default_rng(0)
    t = {"model.layers.10.w": rng.normal(size=(3, 5)).astype(dt), "b": np.ones(1, dt),
         "model.layers.2.w": rng.normal(size=(2, 2, 2)).astype(dt), "a.w": np.zeros((4,), dt)}
    for meta in ({"format": "pt"}, None):
        st_save_file(t, str(tmp_path / "ref"), metadata=meta)
        hf_io.save_file(t, str(tmp_path / "ours"), metadata=meta)
        assert (tmp_path / "ref").read_bytes() == (tmp_path / "ours").read_bytes()


WORKER = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
from jaxselfeval import distributed
assert distributed.initialize()  # from JSE_COORDINATOR / JSE_NUM_PROCESSES / JSE_PROCESS_ID
import jax
import jaxselfeval as jse
from jaxselfeval.sharding import make_mesh
src, out = sys.argv[1], sys.argv[2]
assert jax.process_count() == 2 and jax.device_count() == 4
model = jse.load_pretrained(src, mesh=make_mesh("fsdp=2,tensor=2"))
assert not model.wq[...].is_fully_addressable
jse.save_pretrained(model, out, max_shard_bytes=60_000)
part = distributed.host_shard(list(range(7)))
print("RESULT", jax.process_index(), distributed.is_main(), part, flush=True)
"""


def _port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_export_equals_single_process(hf_models, tmp_path):
    """Two processes joined through JSE_* variables: arrays span hosts (not fully addressable),
    process 0 writes, the files equal the one-process export byte for byte."""
    import os
    import subprocess
    import sys

    path = hf_models["llama3_gqa2_untied"][0]
    single = jse.save_pretrained(jse.load_pretrained(path), tmp_path / "single",
                                 max_shard_bytes=60_000)
    port = _port()
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JSE_COORDINATOR=f"localhost:{port}", JSE_NUM_PROCESSES="2",
                   JSE_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(tmp_path / "two")],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env))
    outs = communicate_all(procs)
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    res = [line.split(" ", 1)[1] for o in outs for line in o.splitlines()
           if line.startswith("RESULT")]
    assert sorted(res) == ["0 True [0, 1, 2]", "1 False [3, 4, 5, 6]"]
    files = sorted(p.name for p in single.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for f in files:
        assert (single / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_distributed_helpers_single_process(monkeypatch):
    from jaxselfeval import distributed as d

    for k in ("JSE_COORDINATOR", "JSE_NUM_PROCESSES", "JSE_PROCESS_ID", "JSE_DISTRIBUTED",
              "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert d.initialize() is False and d.is_main() and d.process_count() == 1
    items = list(range(10))
    parts = [d.host_shard(items, i, 4) for i in range(4)]
    assert sum(parts, []) == items and [len(p) for p in parts] == [2, 3, 2, 3]
    assert d.host_shard(items) == items
    monkeypatch.setenv("JSE_COORDINATOR", "localhost:1234")
    with pytest.raises(jse.JSEError, match="needs all three"):
        d.initialize()
    monkeypatch.setenv("JSE_NUM_PROCESSES", "2")
    monkeypatch.setenv("JSE_PROCESS_ID", "2")
    with pytest.raises(jse.JSEError, match="outside 0..1"):
        d.initialize()
    monkeypatch.setenv("JSE_PROCESS_ID", "x")
    with pytest.raises(jse.JSEError, match="not an integer"):
        d.initialize()


def test_distributed_helpers_use_public_jax_api_only(monkeypatch):
    """process_index/process_count read JAX's public `jax.distributed.is_initialized` (no
    `jax._src.xla_bridge`): a process joined by the caller's own `jax.distributed.initialize`
    reports JAX's index, and the helpers keep working when JAX's private module changes."""
    import subprocess
    import sys

    from jaxselfeval import distributed as d

    monkeypatch.setitem(d._state, "initialized", False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_index", lambda: 3)
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    assert (d.process_index(), d.process_count(), d.is_main()) == (3, 4, False)
    code = ("import jax, jax._src.xla_bridge as xb\n"
            "del xb.backends_are_initialized  # a JAX release without the private helper\n"
            "jax.devices()\n"
            "from jaxselfeval import distributed as d\n"
            "assert (d.process_index(), d.process_count(), d.is_main()) == (0, 1, True)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
