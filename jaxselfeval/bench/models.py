"""Random-weight models for the benchmarks, made straight in their dtype (and sharding).

`random_model` draws what `create_model` draws (normal(0, 0.02) weights, one key per parameter
from the same nnx.Rngs sequence, unit norms), inside one `jax.jit` whose outputs are the
parameters in `dtype` (placed by `state_shardings` when a mesh is given). A weight of more than
`CHUNK` elements is drawn a block of leading rows (one layer of a stacked weight, rows of an
embedding) at a time into its `dtype` result, so the float32 draws and the RNG's temporaries
never exceed one block: no float32 copy of the model, nor of one of its weights, ever exists (an
8B model in bfloat16 takes 16 GB of device memory, not 32 GB of float32 first). Weights up to
`CHUNK` elements (every weight of the small bench shapes but llama3_vocab's embedding) get
create_model's very values, cast.

`torch_model` builds transformers' LlamaForCausalLM in the same dtype on its device and copies
our weights into it one tensor at a time, in memory (DLPack where it can; no file on disk).
"""

from __future__ import annotations

from jaxselfeval.errors import JSEError

SHAPES = {  # bench shape name -> config name (configs/models/) or dict (random weights)
    "tiny": "tiny",
    "small_100m": "small_100m",
    "smollm2_135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "llama3_vocab": dict(vocab_size=128256, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=500000.0,
                         tie_word_embeddings=True),
    "llama3_2_1b": "llama3_2_1b",
    "llama3_1_8b": "llama3_1_8b",
}


def shape_config(name: str, layers: int | None = None):
    """The LlamaConfig of a bench shape (SHAPES, or any configs/models/ name); `layers`: keep
    only that many layers (a cheap stand-in of the same widths, e.g. for a smoke test)."""
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.model.config import LlamaConfig

    spec = SHAPES.get(name, name)
    if isinstance(spec, dict):
        cfg = LlamaConfig.from_dict(dict(spec, bos_token_id=None, eos_token_id=None))
    else:
        cfg = load_model_config(spec)
    if layers is not None:
        if layers < 1:
            raise JSEError(f"--layers must be >= 1, got {layers}")
        cfg = cfg.replace(num_hidden_layers=layers)
    return cfg


def head_name(cfg) -> str:
    """The parameter the logits are read through: the LM head, or the embedding when tied."""
    return "embed" if cfg.tie_word_embeddings else "lm_head"


CHUNK = 2**26  # elements drawn at a time (float32 draw: 256 MiB; the RNG's own temporaries besides)


def _draw(key, shape, std, dtype, chunk: int):
    """normal(0, std) in `dtype`. An array of at most `chunk` elements is drawn whole (float32,
    cast), as create_model draws it; a larger one a block of leading rows (e.g. one layer of a
    stacked weight) at a time, each block from its own key (`fold_in(key, block)`) written into
    the `dtype` result: no float32 (or RNG temporary) larger than a block exists."""
    import math

    import jax
    import jax.numpy as jnp

    def normal(k, s):
        return (std * jax.random.normal(k, s, jnp.float32)).astype(dtype)

    row = math.prod(shape[1:])
    if math.prod(shape) <= chunk or shape[0] == 1:
        return normal(key, shape)
    per = max(1, chunk // row)  # leading rows per block
    blocks = -(-shape[0] // per)

    def body(i, out):  # the last block may overlap the one before it (start clamped): still iid
        start = jnp.minimum(i * per, shape[0] - per)
        return jax.lax.dynamic_update_slice_in_dim(
            out, normal(jax.random.fold_in(key, i), (per, *shape[1:])), start, 0)

    return jax.lax.fori_loop(0, blocks, body, jnp.zeros(shape, dtype))


def _init_fn(cfg, dtype, seed: int, head_std: float | None, chunk: int = CHUNK):
    """() -> {name: array in `dtype`}: create_model's draws (its nnx.Rngs key sequence, one key
    per parameter; `_draw` blocks for the largest), unit norms."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxselfeval.model.llama import param_shapes

    head = head_name(cfg)

    def init():
        rngs = nnx.Rngs(seed)
        out = {}
        for name, (shape, _axes) in param_shapes(cfg).items():
            if name.endswith("norm"):
                out[name] = jnp.ones(shape, dtype)
                continue
            std = head_std if (head_std is not None and name == head) else 0.02
            out[name] = _draw(rngs.params(), shape, std, dtype, chunk)
        return out

    return init


def random_model(cfg, dtype="bfloat16", mesh=None, seed: int = 0, *, compute_dtype=None,
                 attention_impl: str = "auto", head_std: float | None = None,
                 chunk: int = CHUNK):
    """A Llama of config `cfg` with random weights stored in `dtype` (compute dtype
    `compute_dtype`, default `dtype`), sharded over `mesh` by the parameters' logical axes when
    given, without a float32 copy of any weight (see the module's doc). The values are
    create_model(cfg, seed=seed)'s (normal(0, 0.02), unit norms) cast to `dtype`, but for a
    weight of more than `chunk` elements (drawn blockwise: the same distribution, other values);
    `head_std`: the LM head's (the embedding's when tied) standard deviation instead of 0.02 (the
    bench sampler scales the logits to a trained model's spread)."""
    import jax
    from flax import nnx

    from jaxselfeval.model.llama import abstract_model, as_dtype, param_shapes
    from jaxselfeval.sharding import state_shardings

    pdt = as_dtype(dtype)
    model = abstract_model(cfg, param_dtype=pdt, compute_dtype=as_dtype(compute_dtype or pdt),
                           attention_impl=attention_impl)
    graphdef, state = nnx.split(model)
    init = _init_fn(cfg, pdt, seed, head_std, chunk)
    if mesh is not None:
        sh = state_shardings(state, mesh)
        arrays = jax.jit(init, out_shardings={n: sh[n] for n in param_shapes(cfg)})()
    else:
        arrays = jax.jit(init)()
    for name, arr in arrays.items():
        state[name] = state[name].replace(arr)
    return nnx.merge(graphdef, state)


def init_program(cfg, dtype="bfloat16", seed: int = 0, head_std: float | None = None,
                 chunk: int = CHUNK):
    """random_model's jitted init without a mesh: () -> {name: array in `dtype`}. Its
    `.eval_shape()` gives the parameters' avals without drawing them (any size); its
    `.lower().compile().memory_analysis()` what it allocates besides its outputs."""
    import jax

    from jaxselfeval.model.llama import as_dtype

    return jax.jit(_init_fn(cfg, as_dtype(dtype), seed, head_std, chunk))


# ---------------------------------------------------------------------------- transformers


def torch_model(model, device: str):
    """transformers' LlamaForCausalLM of `model`'s config, built in `model`'s parameter dtype on
    `device` (no float32 copy, no file), holding `model`'s weights (`copy_to_torch`)."""
    import numpy as np
    import torch
    import transformers

    dname = np.dtype(model.param_dtype).name
    tdt = getattr(torch, dname)
    hf_cfg = transformers.LlamaConfig(**model.config.to_hf_dict(dname))
    with torch.device(device):  # built there in its dtype: its random init, overwritten below
        tm = transformers.LlamaForCausalLM._from_config(hf_cfg, dtype=tdt)
    copy_to_torch(model, tm)
    return tm.eval()


def _as_torch(x):
    """A jax array as a torch tensor: DLPack (no copy; on the device the array is on), or the
    host (bfloat16 through an int16 view, as numpy has no bfloat16 torch takes)."""
    import numpy as np
    import torch

    try:
        return torch.from_dlpack(x)
    except Exception:  # noqa: BLE001 (a backend or dtype DLPack does not carry)
        a = np.asarray(x)
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))


def copy_to_torch(model, tm) -> None:
    """Copy every parameter of our `model` into transformers' `tm` in place, one HF tensor at a
    time ([out, in] layouts, heads flattened), in `tm`'s dtype on `tm`'s device."""
    import numpy as np
    import torch

    from jaxselfeval.hf_io import weight_layout

    cfg = model.config
    sd = tm.state_dict()
    done = set()
    with torch.no_grad():
        for name, (tmpl, groups, split_shape, perm) in weight_layout(cfg).items():
            hf_shape = tuple(int(np.prod([split_shape[j] for j in g])) for g in groups)
            inv = tuple(int(i) for i in np.argsort(perm))
            param = getattr(model, name)[...]
            layers = range(cfg.num_hidden_layers) if "{i}" in tmpl else [None]
            for i in layers:
                key = tmpl.format(i=i)
                src = _as_torch(param if i is None else param[i])
                dst = sd[key]
                dst.copy_(src.permute(inv).reshape(hf_shape))
                done.add(key)
    missing = [k for k in sd if k not in done and not (k == "lm_head.weight"
                                                        and cfg.tie_word_embeddings)]
    if missing:
        raise JSEError(f"transformers' model has weights ours does not: {missing[:3]}")
    if cfg.tie_word_embeddings:
        tm.tie_weights()
