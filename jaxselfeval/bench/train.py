"""`jaxselfeval bench train`: training step time, tokens/s and MFU against the chip's dense bf16
peak, full fine-tuning and LoRA side by side in one run.

    jaxselfeval bench train --model small_100m --batch 4 --seq 1024 --modes full,lora
    jaxselfeval bench train --model llama3_2_1b --batch 4 --seq 2048

Random weights of the shape (`bench.models.random_model`: made straight in `--param-dtype` on
the mesh, nothing downloaded). The peak (`roofline.chip_limits`): the datasheet's dense bf16
figure on a known GPU (H100 SXM, H200, A100 80GB), else measured in the same run: a large bf16
matmul with f32 accumulation, jitted, timed after warm-up; the line `limits:` says which.
Model FLOPs per token, the usual MFU convention (remat recompute not counted;
attention counted as a full S x S product, though causal kernels skip half of it):
full fine-tuning 6 * N + 12 * layers * seq * hidden (N: parameters less the input embedding
table, whose gather is no matmul); LoRA the same count of the *same model* (the work a full step
does, so the two MFU columns compare step times at equal FLOPs), plus `lora_flops` shows what
LoRA needs itself (forward 2N, input gradients 2N, no weight gradients: 4 * N + attention).
"""

from __future__ import annotations

import json
import time

from jaxselfeval.fileio import write_file


def add_arguments(p):
    p.add_argument("--model", default="small_100m",
                   help="model shape: configs/models/NAME.yaml (e.g. llama3_2_1b) or a bench "
                        "sampler shape")
    p.add_argument("--layers", type=int, default=None,
                   help="keep only this many layers of the shape (a cheap stand-in)")
    p.add_argument("--param-dtype", default="float32",
                   help="parameter (master weight) dtype, as the trainer's param_dtype")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    p.add_argument("--dtypes", default="bfloat16", help="compute dtypes to compare")
    p.add_argument("--modes", default="full,lora",
                   help="full (AdamW on every weight) and/or lora (adapters only, frozen base)")
    p.add_argument("--lora", default="rank=16;alpha=32;targets=wq,wk,wv,wo",
                   help="LoRA settings for the lora rows (key=value;...)")
    p.add_argument("--attention", default="auto",
                   choices=["auto", "exact", "blockwise", "splash", "cudnn"],
                   help="attention kernel (auto: cudnn on a GPU, splash on a TPU, for long "
                        "sequences)")
    p.add_argument("--remat", action="store_true",
                   help="jax.checkpoint per layer (the trainer's remat: less memory, recompute "
                        "not counted in MFU)")
    p.add_argument("--out", default=None, help="also write JSON here")


def _time(fn, n):
    fn()  # warm-up / compile
    fn()  # a second call: a step whose outputs changed its input types would compile here
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def _step(model, mode, lora_spec, mesh):
    """A jitted step(state) -> state for full fine-tuning or LoRA; returns (fn, state,
    kernels(state, batch): the attention kernels the step's program runs)."""
    from jaxselfeval import lora as lora_mod
    from jaxselfeval.model.attention import attention_kernels
    from jaxselfeval.sharding import shard_model
    from jaxselfeval.train import TrainConfig, lm_loss
    from jaxselfeval.train.step import (init_opt_state, jit_train_step, make_optimizer,
                                        make_train_step, split_trainable)

    tx = make_optimizer(TrainConfig())
    if mode == "lora":
        lora_mod.add_lora(model, lora_mod.parse_lora_spec(lora_spec))
    # placed on the mesh before the first call, as the trainer does: unplaced parameters have
    # another type than the step's outputs, and the second step would compile again
    shard_model(model, mesh)
    graphdef, params, frozen = split_trainable(model)
    opt = init_opt_state(tx, params, mesh)
    step = jit_train_step(make_train_step(graphdef, lm_loss, tx), params, frozen, opt, mesh)

    def run(state, batch):
        state["p"], state["o"], m = step(state["p"], frozen, state["o"], batch)
        return m

    def kernels(state, batch):
        return attention_kernels(step.lower(state["p"], frozen, state["o"], batch))

    return run, {"p": params, "o": opt}, kernels


def run(args) -> int:
    from jaxselfeval.bench.models import shape_config

    cfg = shape_config(args.model, args.layers)  # a bad name fails here, before any timing
    import jax
    import numpy as np

    import jaxselfeval as jse
    from jaxselfeval.bench.models import random_model
    from jaxselfeval.bench.roofline import chip_limits, describe
    from jaxselfeval.sharding import make_mesh

    limits = chip_limits(["bfloat16", "float32"])
    peak, peak32 = limits["peaks"]["bfloat16"], limits["peaks"]["float32"]
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32),
             "mask": np.ones((args.batch, args.seq), np.float32)}
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    mesh = make_mesh("data=1,fsdp=-1")
    results = {"peak_bf16_tflops": peak / 1e12, "peak_f32_tflops": peak32 / 1e12,
               "limits": limits, "model": args.model, "layers": L,
               "param_dtype": args.param_dtype, "remat": args.remat, "batch": args.batch,
               "seq": args.seq, "runs": []}
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; {args.model} "
          f"({L} layers), parameters {args.param_dtype}, batch {args.batch} x seq {args.seq}"
          f"{', remat' if args.remat else ''}")
    print(describe(limits))
    src = limits["source"]
    for cd in args.dtypes.split(","):
        full_s = None
        for mode in args.modes.split(","):
            model = random_model(cfg, args.param_dtype, mesh, seed=0, compute_dtype=cd,
                                 attention_impl=args.attention)
            model.remat = args.remat
            n = jse.count_params(model) - V * D  # the input embedding is a gather
            attn = 12 * L * args.seq * D
            flops_tok = 6 * n + attn
            fn, state, kernels = _step(model, mode, args.lora, mesh)
            with jax.set_mesh(mesh):
                s = _time(lambda: fn(state, batch)["loss"].block_until_ready(), args.steps)
                used = kernels(state, batch)
            del model, fn, state, kernels
            tps = args.batch * args.seq / s
            mfu = tps * flops_tok / peak
            row = {"mode": mode, "compute_dtype": cd, "step_s": s, "tokens_per_s": tps,
                   "mfu_vs_bf16_peak": mfu, "peak": src, "bound_s": args.batch * args.seq
                   * flops_tok / peak, "attention": used,
                   "lora_flops_per_token": 4 * n + attn if mode == "lora" else None}
            if mode == "full":
                full_s = s
            speed = f"  {full_s / s:4.2f}x full" if mode != "full" and full_s else ""
            results["runs"].append(row)
            print(f"{mode:5s} compute {cd:9s} step {s * 1e3:8.1f} ms (bound "
                  f"{row['bound_s'] * 1e3:.1f} ms)  {tps:8.0f} tokens/s  MFU {100 * mfu:5.1f}% "
                  f"of the {src} bf16 peak (full-step FLOPs){speed}  "
                  f"attention {'+'.join(row['attention'])}", flush=True)
    if args.out:
        write_file(args.out, json.dumps(results, indent=2))
    return 0
