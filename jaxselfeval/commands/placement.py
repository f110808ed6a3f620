"""--dtype / --mesh: where a command that samples puts the model (one device by default)."""

from __future__ import annotations


def add_placement_arguments(p):
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weight dtype for sampling; bfloat16 also computes and caches in bf16 "
                        "with f32 accumulation (half the memory; default float32)")
    p.add_argument("--mesh", default=None,
                   help="shard the model over this host's devices, e.g. tensor=4 or "
                        "fsdp=2,tensor=4 (axes data, fsdp, tensor; sizes multiply to the local "
                        "device count; default: one device). Several hosts each sample their own "
                        "prompts on their own chips")


def load_model(path, args):
    from jaxselfeval.sharding import load_for_sampling

    return load_for_sampling(path, args.dtype, args.mesh)
