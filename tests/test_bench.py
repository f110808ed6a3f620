"""Benchmarks measure what they say: no compile inside the timed steps."""

import jax
import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.bench.train import _step
from jaxselfeval.configs import load_model_config
from jaxselfeval.sharding import make_mesh

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_bench_train_step_compiles_once(mode):
    """The first step's outputs carry the mesh's shardings; unplaced inputs made the second step
    compile again, and that compile landed in the timed steps (1.5% MFU on an H200)."""
    cfg = load_model_config("tiny")
    mesh = make_mesh("data=1,fsdp=-1")
    model = jse.create_model(cfg, compute_dtype="float32")
    fn, state = _step(model, mode, "rank=4;targets=wq,wv", mesh)
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
    compiled = eng._probe.lower(eng.state, P, C, suffix, jnp.asarray([30, 31], jnp.int32),
                                window=window, layers=eng.layers).compile()
    xla = compiled.cost_analysis()["flops"]
    ours = probe_flops(cfg, n, turn, 24 + gen)
    assert 0.9 * xla <= ours <= xla, (ours, xla)
