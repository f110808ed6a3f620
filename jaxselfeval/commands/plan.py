"""`jaxselfeval plan`: will the model train / serve on this slice? AOT-compiled memory per device.

    jaxselfeval plan --config llama3_1_8b --chip v5p-32 --mesh fsdp=16 --batch 32 --seq 4096

Runs on a laptop: the mesh is simulated with CPU devices (XLA_FLAGS is set here, before JAX
starts) and no weights are read.
"""

from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("--config", default="llama3_1_8b",
                   help="model shape: a YAML path or a name in configs/models/ (default llama3_1_8b)")
    p.add_argument("--mesh", default=None,
                   help="mesh axes, e.g. fsdp=16 or fsdp=4,tensor=4 (default: fsdp over the slice)")
    p.add_argument("--chip", default="v5p",
                   help="v4, v5e, v5p, v6e, h100, h200, or a slice such as v5p-32 / v5e-16 "
                        "(v4-N and v5p-N count TensorCores: v5p-32 is 16 JAX devices)")
    p.add_argument("--only", default="train,prefill,decode",
                   help="programs to compile, comma-separated (train, prefill, decode)")
    g = p.add_argument_group("training")
    g.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    g.add_argument("--seq", type=int, default=2048, help="sequence length")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    g.add_argument("--no-remat", action="store_true", help="keep activations (no rematerialisation)")
    g.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="master weights (frozen base weights with --lora)")
    g.add_argument("--compute-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    g.add_argument("--lora", default=None, metavar="KEY=V[;KEY=V]",
                   help="train LoRA adapters only, e.g. 'rank=16;alpha=32;targets=wq,wv'")
    g = p.add_argument_group("sampling")
    g.add_argument("--decode-batch", type=int, default=8, help="candidate rows decoded together")
    g.add_argument("--n", type=int, default=1, help="candidates per prompt (share its cache)")
    g.add_argument("--prompt-len", type=int, default=2048, help="prompt cache slots")
    g.add_argument("--max-new", type=int, default=2048, help="generated-token cache slots")
    g.add_argument("--weights-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "tpu"],
                   help="tpu: libtpu's deviceless compiler (real TPU buffer sizes; needs "
                        "jax[tpu]); cpu: simulated CPU devices; auto: tpu when libtpu is installed")
    p.add_argument("--attention", default="auto",
                   choices=["auto", "exact", "blockwise", "splash", "cudnn"],
                   help="attention implementation (auto: exact for short shapes and decode; else "
                        "splash on TPU, cuDNN on GPU, blockwise on CPU); the plan prints which "
                        "one each program used")
    p.add_argument("--no-activation-sharding", action="store_true",
                   help="trace without jax.set_mesh (activations not constrained to the batch axes)")
    p.add_argument("--json", default=None, help="also write the figures as JSON to this path")


def run(args) -> int:
    from jaxselfeval.lora import parse_lora_spec
    from jaxselfeval.plan import PlanConfig, format_plan, mesh_devices, run_plan, simulate_devices

    pc = PlanConfig(model=args.config, mesh=args.mesh, chip=args.chip,
                    programs=tuple(x.strip() for x in args.only.split(",") if x.strip()),
                    batch=args.batch, seq=args.seq, grad_accum=args.grad_accum,
                    remat=not args.no_remat, param_dtype=args.param_dtype,
                    compute_dtype=args.compute_dtype, lora=parse_lora_spec(args.lora),
                    decode_batch=args.decode_batch, n=args.n, prompt_len=args.prompt_len,
                    max_new=args.max_new, weights_dtype=args.weights_dtype,
                    backend=args.backend, activation_sharding=not args.no_activation_sharding,
                    attention=args.attention)
    simulate_devices(mesh_devices(pc))  # before anything starts a JAX backend
    res = run_plan(pc)
    print(format_plan(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0
