"""Benchmarks measure what they say: no compile inside the timed steps."""

import jax
import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.bench.train import _step
from jaxselfeval.configs import load_model_config
from jaxselfeval.sharding import make_mesh

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
BF16 = np.dtype(jax.numpy.bfloat16)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_bench_train_step_compiles_once(mode):
    """The first step's outputs carry the mesh's shardings; unplaced inputs made the second step
    compile again, and that compile landed in the timed steps (1.5% MFU on an H200)."""
    cfg = load_model_config("tiny")
    mesh = make_mesh("data=1,fsdp=-1")
    model = jse.create_model(cfg, compute_dtype="float32")
    fn, state, kernels = _step(model, mode, "rank=4;targets=wq,wv", mesh)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, cfg.vocab_size, (8, 16)).astype(np.int32),
             "mask": np.ones((8, 16), np.float32)}
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if name == COMPILE_EVENT else None)
    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # every compile is a compile here
    try:
        with jax.set_mesh(mesh):
            fn(state, batch)["loss"].block_until_ready()
            first = len(compiles)
            for _ in range(2):
                fn(state, batch)["loss"].block_until_ready()
    finally:
        jax.config.update("jax_enable_compilation_cache", cached)
    assert first >= 1 and len(compiles) == first, compiles
    with jax.set_mesh(mesh):
        assert kernels(state, batch) == ["exact"]  # what `bench train` reports, read off the step


def test_paired_timing_alternates_and_takes_medians():
    """Each side: one warm-up call, then `repeat` timed calls, a and b alternating."""
    from jaxselfeval.bench.sampler import _paired

    calls = []
    ta, tb = _paired(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    assert calls == ["a", "b"] * 4 and ta >= 0 and tb >= 0


def test_bench_sampler_runs_side_by_side(tmp_path, capsys):
    """A tiny `bench sampler` run: the same dtype on both sides, a ratio, the roofline bound and
    the repeat count in its JSON; a bad --repeat is one clear error and writes nothing."""
    import json

    from jaxselfeval.cli import main

    out = tmp_path / "runs" / "bench" / "b.json"  # folders that do not exist yet are made
    args = ["bench", "sampler", "--shapes", "tiny", "--dtypes", "float32", "--modes", "greedy",
            "--n", "2", "--new-tokens", "4", "--prompt-len", "8", "--figures-shape", "",
            "--repeat", "2", "--out", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert res["repeat"] == 2 and row["dtype"] == "float32" and row["speedup"] > 0
    assert row["bound_s"] > 0 and 0 < row["step_s"] <= row["call_s_per_token"]
    bad = tmp_path / "bad.json"
    assert main(args[:-4] + ["--repeat", "0", "--out", str(bad)]) != 0
    assert "--repeat must be >= 1" in capsys.readouterr().err and not bad.exists()


def test_bench_refuses_an_unwritable_out_before_it_runs(tmp_path, capsys):
    """--out is checked before any timing (a run once failed at its very end, after 15 minutes,
    on a folder that did not exist): a directory or a path below a file is one error line."""
    from jaxselfeval.cli import main

    (tmp_path / "afile").write_text("x")
    for out, msg in ((tmp_path, "is a directory"), (tmp_path / "afile" / "b.json", "not a writable folder")):
        args = ["bench", "sampler", "--shapes", "nonesuch", "--out", str(out)]
        assert main(args) != 0
        err = capsys.readouterr().err
        assert msg in err and "nonesuch" not in err, err
    assert (tmp_path / "afile").read_text() == "x"


def test_probe_flops_count_what_xla_counts_for_the_unrolled_probe():
    """`roofline.probe_flops` (the probe's floor the bench prints) against XLA's own FLOP count of
    the compiled probe (unrolled layers: XLA counts every layer, and elementwise work besides):
    between 90% and 100% of it."""
    import jax.numpy as jnp

    import jaxselfeval as jse
    from jaxselfeval.bench.roofline import probe_flops
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.sample import Engine
    from jaxselfeval.sample.engine import windows

    cfg = load_model_config("tiny")
    eng = Engine(jse.create_model(cfg, seed=0), seed=0, per_layer=True)
    n, gen, turn = 4, 32, 9
    P = eng.prefill([list(range(5, 29))])
    C = eng.decode(P, eng.branch(P, n, gen), until=gen)
    suffix = jnp.arange(2, 2 + turn, dtype=jnp.int32)
    window = next(w for w in windows(C.cache.max_len) if w >= C.step)
    assert window == gen  # every slot read is visible: XLA's count has no masked keys
    compiled = eng.programs.probe.lower(eng.state, P, C, suffix,
                                        jnp.asarray([30, 31], jnp.int32), window=window,
                                        weights=eng.weights).compile()
    xla = compiled.cost_analysis()["flops"]
    ours = probe_flops(cfg, n, turn, 24 + gen)
    assert 0.9 * xla <= ours <= xla, (ours, xla)


def test_random_model_is_made_in_its_dtype_without_a_float32_copy():
    """`bench.models.random_model`: every parameter in the requested dtype (placed on the mesh
    when one is given), create_model's draws cast (weights up to CHUNK elements), unit norms;
    the jitted init's outputs are bf16, and drawn blockwise it allocates less than half the model
    in float32 besides them (drawn whole, on this CPU, more than the model in float32: the check
    sees a float32 copy)."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxselfeval.bench.models import init_program, random_model
    from jaxselfeval.model.llama import param_shapes
    from jaxselfeval.sharding import state_shardings

    cfg = load_model_config("tiny")
    mesh = make_mesh("data=1,fsdp=-1")
    model = random_model(cfg, "bfloat16", mesh)
    ref = jse.create_model(cfg, seed=0)
    assert model.param_dtype == model.compute_dtype == jnp.bfloat16
    state = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(state)
    assert len(leaves) == len(param_shapes(cfg)) and {x.dtype for x in leaves} == {BF16}
    shardings = state_shardings(nnx.state(model), mesh)
    for name in param_shapes(cfg):
        got = getattr(model, name)[...]
        assert got.sharding == shardings[name], name
        want = np.asarray(getattr(ref, name)[...]).astype(jnp.bfloat16).astype(np.float32)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-4, err_msg=name)
    assert (np.asarray(model.final_norm[...], np.float32) == 1).all()

    f32_bytes = 4 * jse.count_params(model)
    for chunk, small in ((4096, True), (2**26, False)):
        prog = init_program(cfg, "bfloat16", chunk=chunk)
        avals = jax.tree.leaves(prog.eval_shape())
        assert {a.dtype for a in avals} == {BF16}
        temp = prog.lower().compile().memory_analysis().temp_size_in_bytes
        assert (temp < f32_bytes / 2) == small, (chunk, temp, f32_bytes)
    blocks = random_model(cfg, "bfloat16", chunk=4096)  # blockwise: the same distribution
    w = np.asarray(blocks.w_gate[...], np.float32)
    assert blocks.w_gate[...].dtype == jnp.bfloat16 and abs(w.std() - 0.02) < 1e-3
    assert abs(w.mean()) < 1e-3 and not np.array_equal(w, np.asarray(model.w_gate[...], np.float32))


def test_real_shapes_resolve_without_drawing_them():
    """llama3_2_1b and llama3_1_8b: the benches' shapes, their init's avals all bf16 at the
    parameter counts of the real models (traced, never drawn on this CPU), --layers keeps the
    widths."""
    import jax.numpy as jnp

    from jaxselfeval.bench.models import SHAPES, init_program, shape_config

    for name, billions in (("llama3_2_1b", 1.236), ("llama3_1_8b", 8.030)):
        assert name in SHAPES
        avals = jax.tree.leaves(init_program(shape_config(name)).eval_shape())
        assert {a.dtype for a in avals} == {BF16}
        assert abs(sum(a.size for a in avals) / 1e9 - billions) < 0.01, name
        one = shape_config(name, layers=1)
        assert one.num_hidden_layers == 1 and one.hidden_size == shape_config(name).hidden_size


def test_bench_commands_take_the_real_shapes_and_their_flags():
    """The three benches parse the 1B/8B shapes and the flags gpu_check.sh passes."""
    from jaxselfeval.cli import build_parser

    p = build_parser()
    a = p.parse_args(["bench", "sampler", "--shapes", "llama3_1_8b", "--dtypes", "bfloat16",
                      "--figures-shape", "llama3_1_8b", "--figures-prompt-len", "2048",
                      "--layers", "2"])
    assert a.shapes == "llama3_1_8b" and a.figures_prompt_len == 2048 and a.layers == 2
    a = p.parse_args(["bench", "prune", "--shape", "llama3_1_8b", "--dtype", "bfloat16",
                      "--at", "16", "--keep", "0.25"])
    assert a.shape == "llama3_1_8b" and a.at == 16 and a.layers is None
    a = p.parse_args(["bench", "train", "--model", "llama3_2_1b", "--seq", "2048", "--remat",
                      "--attention", "cudnn", "--param-dtype", "bfloat16"])
    assert a.model == "llama3_2_1b" and a.remat and a.attention == "cudnn"


def test_torch_model_runs_our_weights():
    """transformers' model built in our dtype holds our weights (copied in memory, no file):
    the same logits, tied LM head or not."""
    import jax.numpy as jnp
    import torch

    from jaxselfeval.bench.models import random_model, torch_model

    toks = np.array([[1, 5, 7, 9, 11, 13]])
    for tied in (False, True):
        cfg = load_model_config("tiny").replace(tie_word_embeddings=tied)
        model = random_model(cfg, "float32", head_std=0.3)
        tm = torch_model(model, "cpu")
        assert next(tm.parameters()).dtype == torch.float32
        with torch.no_grad():
            theirs = tm(torch.tensor(toks)).logits.numpy()
        np.testing.assert_allclose(np.asarray(model(jnp.asarray(toks))), theirs, atol=1e-3)


def test_chip_limits_datasheet_by_device_kind():
    """Known GPUs take the datasheet's HBM bandwidth and dense bf16 peak; others are measured."""
    from jaxselfeval.bench.roofline import chip_limits, datasheet_chip

    kinds = {"NVIDIA H200": "NVIDIA H200", "NVIDIA H100 80GB HBM3": "NVIDIA H100 SXM",
             "NVIDIA A100-SXM4-80GB": "NVIDIA A100 80GB SXM",
             "NVIDIA A100 80GB PCIe": "NVIDIA A100 80GB PCIe", "NVIDIA H100 PCIe": None,
             "NVIDIA H100 NVL": None, "NVIDIA GH200 480GB": None, "cpu": None, "TPU v5p": None}
    for kind, chip in kinds.items():
        assert datasheet_chip(kind) == chip, kind
    lim = chip_limits([], device_kind="NVIDIA H200")  # nothing measured
    assert lim["source"] == "datasheet" and lim["measured"] == []
    assert lim["bandwidth"] == 4.8e12 and lim["peaks"] == {"bfloat16": 989e12}


def test_bench_prune_and_train_run_random_shapes(tmp_path):
    """`bench prune --shape` and `bench train --layers` run random weights of a shape (tiny here,
    two layers; batch 8 for the tests' 8 CPU devices): rows with their bounds and the limits
    they used."""
    import json

    from jaxselfeval.cli import main

    out = tmp_path / "prune.json"
    assert main(["bench", "prune", "--shape", "tiny", "--layers", "2", "--prompts", "2",
                 "--n", "4", "--at", "2", "--keep", "0.5", "--max-new-tokens", "4",
                 "--repeat", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"].startswith("tiny") and res["limits"]["source"] == "measured"
    assert 0 < res["pruned"]["decode_bound_s"] < res["full"]["decode_bound_s"]
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--model", "tiny", "--layers", "2", "--batch", "8", "--seq",
                 "16", "--steps", "1", "--modes", "full", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    (row,) = res["runs"]
    assert res["layers"] == 2 and row["bound_s"] > 0 and row["peak"] == "measured"
