"""`jaxselfeval bench train`: training tokens/s and MFU against this machine's measured bf16 peak.

The peak is measured in the same run: a large bf16 matmul with f32 accumulation, jitted, timed
after warm-up. Model FLOPs per token = 6 * params (non-embedding) + 12 * layers * seq * hidden
(attention), the usual MFU convention (remat recompute not counted).
"""

from __future__ import annotations

import json
import time


def add_arguments(p):
    p.add_argument("--model", default="tiny", help="model shape config (configs/models/NAME.yaml)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=192)
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    p.add_argument("--dtypes", default="bfloat16,float32", help="compute dtypes to compare")
    p.add_argument("--out", default=None, help="also write JSON here")


def _time(fn, n):
    fn()  # warm-up / compile
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def matmul_peak(n: int = 2048, dtype="bfloat16") -> float:
    """Measured FLOP/s of an [n, n] x [n, n] matmul (f32 accumulation)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    s = _time(lambda: f(a, b).block_until_ready(), 5)
    return 2 * n**3 / s


def run(args) -> int:
    import jax
    import numpy as np
    from flax import nnx

    import jaxselfeval as jse
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.train import TrainConfig, lm_loss
    from jaxselfeval.train.step import init_opt_state, jit_train_step, make_optimizer, make_train_step

    cfg = load_model_config(args.model)
    peak = matmul_peak()
    peak32 = matmul_peak(dtype="float32")
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32),
             "mask": np.ones((args.batch, args.seq), np.float32)}
    L, D = cfg.num_hidden_layers, cfg.hidden_size
    results = {"peak_bf16_tflops": peak / 1e12, "peak_f32_tflops": peak32 / 1e12, "runs": []}
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; measured matmul peak "
          f"bf16 {peak / 1e12:.2f} TFLOP/s, f32 {peak32 / 1e12:.2f} TFLOP/s")
    for cd in args.dtypes.split(","):
        model = jse.create_model(cfg, compute_dtype=cd)
        n_params = jse.count_params(model)
        n_embed = cfg.vocab_size * D * (1 if cfg.tie_word_embeddings else 2)
        flops_tok = 6 * (n_params - n_embed + cfg.vocab_size * D) + 12 * L * args.seq * D
        tcfg = TrainConfig(mesh="data=1,fsdp=-1")
        from jaxselfeval.sharding import make_mesh

        mesh = make_mesh("data=1,fsdp=-1")
        graphdef, params = nnx.split(model, nnx.Param)
        tx = make_optimizer(tcfg)
        opt = init_opt_state(tx, params, mesh)
        step = jit_train_step(make_train_step(graphdef, lm_loss, tx), params, opt, mesh)
        state = {"p": params, "o": opt}

        def one():
            state["p"], state["o"], m = step(state["p"], state["o"], batch)
            m["loss"].block_until_ready()

        s = _time(one, args.steps)
        tps = args.batch * args.seq / s
        mfu = tps * flops_tok / peak
        results["runs"].append({"compute_dtype": cd, "params": n_params, "step_s": s,
                                "tokens_per_s": tps, "mfu_vs_bf16_peak": mfu})
        print(f"compute {cd:9s} params {n_params / 1e6:.1f}M  step {s * 1e3:7.1f} ms  "
              f"{tps:9.0f} tokens/s  MFU {100 * mfu:5.1f}% of measured bf16 peak (goal >= 30%)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0
