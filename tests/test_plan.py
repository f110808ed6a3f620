"""`jaxselfeval plan`: AOT-compiled train / prefill / decode of the 8B config on simulated devices,
bytes per device against the chip's HBM; clear errors; the activation-sharding constraint."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.cli import main
from jaxselfeval.plan import HBM, PlanConfig, mesh_devices, parse_chip, run_plan
from jaxselfeval.sharding import batch_sharding, make_mesh, shard_model

P8B = 8_030_261_248  # Llama 3.1 8B parameters


def _plan(capsys, tmp_path, *args):
    out = tmp_path / "plan.json"
    assert main(["plan", "--backend", "cpu", *args, "--json", str(out)]) == 0
    return capsys.readouterr().out, json.loads(out.read_text())


def test_plan_8b_on_8_simulated_devices(capsys, tmp_path):
    assert jax.device_count() == 8
    text, res = _plan(capsys, tmp_path, "--config", "configs/models/llama3_1_8b.yaml",
                      "--mesh", "fsdp=8", "--chip", "v5p", "--batch", "8", "--seq", "128",
                      "--decode-batch", "8", "--prompt-len", "128", "--max-new", "64")
    assert res["params"] == P8B and res["devices"] == 8 and res["hbm"] == HBM["v5p"]
    tr, dec = res["programs"]["train"], res["programs"]["decode"]
    # f32 master weights + two AdamW moments, split 8 ways (+ a few scalars)
    assert abs(tr["arguments"] - 12 * P8B / 8) / (12 * P8B / 8) < 0.01
    assert tr["aliased"] >= 0.99 * tr["arguments"]  # params and optimizer state are donated
    # bf16 weights split 8 ways + the prompt and candidate caches
    assert 2 * P8B / 8 <= dec["arguments"] < 1.1 * 2 * P8B / 8
    for name in ("train", "prefill", "decode"):
        r = res["programs"][name]
        assert r["total"] == r["arguments"] + r["outputs"] - r["aliased"] + r["temps"] + r["code"]
        assert f"{name}: FITS" in text
    assert "overall: FITS" in text and "simulated on 8 CPU devices" in text


def test_plan_does_not_fit_and_lora(capsys, tmp_path):
    # JAX started with the suite's 8 devices (run alone, the first plan would start it with 1)
    assert jax.device_count() == 8
    text, res = _plan(capsys, tmp_path, "--mesh", "fsdp=1", "--chip", "v5e", "--only", "train",
                      "--batch", "1", "--seq", "64")
    assert res["programs"]["train"]["arguments"] > 12 * P8B  # 96 GB of state on one chip
    assert "train: DOES NOT FIT" in text and "overall: DOES NOT FIT" in text
    # LoRA on a bf16 base: the state is the frozen weights plus small adapters and moments
    text, res = _plan(capsys, tmp_path, "--mesh", "fsdp=8", "--chip", "v5e", "--only", "train",
                      "--batch", "8", "--seq", "64", "--param-dtype", "bfloat16",
                      "--lora", "rank=8;alpha=16;targets=wq,wv")
    args = res["programs"]["train"]["arguments"]
    assert 2 * P8B / 8 < args < 1.05 * 2 * P8B / 8
    assert "LoRA r=8" in text


def test_plan_command_simulates_its_own_devices(tmp_path):
    """A fresh process: the command sets XLA_FLAGS for 16 devices before JAX starts."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-m", "jaxselfeval.cli", "plan", "--config", "tiny",
                        "--chip", "v5e-16", "--mesh", "fsdp=4,tensor=4", "--only", "decode",
                        "--backend", "cpu", "--decode-batch", "16", "--prompt-len", "32",
                        "--max-new", "16"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "simulated on 16 CPU devices" in r.stdout and "mesh data=1 fsdp=4 tensor=4" in r.stdout
    assert "decode: FITS" in r.stdout


def test_plan_errors(capsys):
    with pytest.raises(jse.JSEError, match=r"unknown chip 'v5x'.*v4, v5e, v5p, v6e, h100, h200"):
        parse_chip("v5x")
    assert parse_chip("v5p-32") == ("v5p", 16) and parse_chip("v5litepod-16") == ("v5e", 16)
    with pytest.raises(jse.JSEError, match="v5p-32 has 16 JAX devices|has 16 JAX devices"):
        mesh_devices(PlanConfig(chip="v5p-32", mesh="fsdp=32"))
    assert mesh_devices(PlanConfig(chip="v5e-16", mesh="fsdp=4,tensor=-1")) == 16
    with pytest.raises(jse.JSEError, match="needs a device count"):
        mesh_devices(PlanConfig(chip="v5p", mesh="fsdp=-1"))
    with pytest.raises(jse.JSEError, match="not divisible by the data axes"):
        run_plan(PlanConfig(model="tiny", mesh="fsdp=8", batch=4, programs=("train",),
                            backend="cpu"))
    with pytest.raises(jse.JSEError, match="unknown program 'decod'.*did you mean 'decode'"):
        run_plan(PlanConfig(model="tiny", mesh="fsdp=8", programs=("decod",), backend="cpu"))
    assert main(["plan", "--chip", "tpu9", "--mesh", "fsdp=8"]) == 2
    assert "error: unknown chip 'tpu9'" in capsys.readouterr().err
    assert main(["plan", "--config", "tiny", "--mesh", "fsdp=8", "--backend", "cpu",
                 "--only", "train", "--lora", "rank=2;targets=wq,w_dwn"]) == 2
    assert "unknown lora target 'w_dwn' (did you mean 'w_down'?)" in capsys.readouterr().err


def test_forward_under_set_mesh_equals_unsharded(hf_models):
    """`shard_batch` (the constraint plan traces with) keeps the forward exact."""
    path = hf_models["llama3_gqa2_untied"][0]
    model = jse.load_pretrained(path)
    toks = np.random.default_rng(0).integers(3, model.config.vocab_size, (8, 9)).astype(np.int32)
    ref = np.asarray(model(toks))
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    g, st = nnx.split(shard_model(jse.load_pretrained(path), mesh))
    f = jax.jit(lambda st, t: nnx.merge(g, st)(t))
    x = jax.device_put(toks, batch_sharding(mesh))
    assert "sharding_constraint" not in f.lower(st, x).as_text()  # no mesh set: no constraint
    with jax.set_mesh(mesh):
        text = f.lower(st, x).as_text()
        out = f(st, x)
    assert '[{"data", "fsdp"}, {}, {}]' in text  # activations [B, S, D] split on B
    assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_compiler_out_of_memory_is_does_not_fit(monkeypatch):
    """libtpu refuses to compile a program whose temps exceed HBM: reported, not raised."""
    import jaxselfeval.plan as plan

    def refuse(cfg, pc, mesh):
        raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
                           "required for HLO temporaries (21.51G) exceeds available HBM (15.75G).")

    monkeypatch.setitem(plan.COMPILERS, "train", refuse)
    res = run_plan(PlanConfig(model="tiny", mesh="fsdp=8", chip="v5e", programs=("train",),
                              backend="cpu"))
    assert not res["fits"] and "21.51G" in res["programs"]["train"]["error"]
    text = plan.format_plan(res)
    assert "train: DOES NOT FIT (the compiler refused it: Ran out of memory" in text


def _libtpu_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not _libtpu_importable(),
                    reason="libtpu is not installed (pip install -e '.[tpu]'): the TPU compiler "
                           "plan is covered only where it is")
def test_plan_compiles_for_a_tpu_topology_with_splash(tmp_path):
    """libtpu's deviceless compiler builds the train step (Pallas splash attention, seq 2048),
    prefill (splash too: a fresh cache, the prompt's own segment only) and decode (exact) for a
    v5e 2x2 slice; the kernels are read off the lowered programs."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # other libtpu processes may hold its lockfile
    out = tmp_path / "plan.json"
    r = subprocess.run([sys.executable, "-m", "jaxselfeval.cli", "plan", "--config", "tiny",
                        "--chip", "v5e-4", "--mesh", "fsdp=4", "--backend", "tpu", "--batch", "4",
                        "--seq", "2048", "--decode-batch", "4", "--prompt-len", "2048",
                        "--max-new", "128", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert "by libtpu" in res["where"]
    progs = res["programs"]
    assert progs["train"]["attention"] == ["splash"]
    assert progs["prefill"]["attention"] == ["splash"]
    assert progs["decode"]["attention"] == ["exact"]
    assert "attention splash" in r.stdout and "overall: FITS" in r.stdout
