"""--dtype / --mesh: where a command that samples puts the model (one device by default)."""

from __future__ import annotations


def add_placement_arguments(p):
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weight dtype for sampling; bfloat16 also computes and caches in bf16 "
                        "with f32 accumulation (half the memory; default float32)")
    p.add_argument("--mesh", default=None,
                   help="shard the model over this host's devices, e.g. tensor=4 or "
                        "fsdp=2,tensor=4 (axes data, fsdp, tensor; sizes multiply to the local "
                        "device count; default: one device). On several hosts, data build and "
                        "eval give each host its own prompts, sampled on its own chips")


def _mesh(args):
    """This host's mesh from --mesh (made once per command), or None."""
    if not hasattr(args, "_local_mesh"):
        from jaxselfeval.sharding import local_mesh

        args._local_mesh = local_mesh(args.mesh)
    return args._local_mesh


def load_model(path, args):
    """The policy at `path` in --dtype, sharded over --mesh (each device reads its slice)."""
    from jaxselfeval.hf_io import load_pretrained

    return load_pretrained(path, args.dtype, mesh=_mesh(args))


def load_rm(path, tokenizer, args):
    """The external reward model at `path`, checked against the policy's tokenizer, placed like
    the policy (--dtype, --mesh)."""
    from jaxselfeval.selfeval.reward_model import check_rm_tokenizer, load_reward_model

    check_rm_tokenizer(path, tokenizer)
    return load_reward_model(path, args.dtype, mesh=_mesh(args))
