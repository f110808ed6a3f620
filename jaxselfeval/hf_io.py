"""HF checkpoint directories in and out: config.json + safetensors (single or sharded).

Loading reads each device's slice of each tensor straight from the safetensors files (memory
mapped), so a sharded 8B load never materialises a whole stacked tensor on one host. Export
writes one tensor at a time; only process 0 writes; files appear atomically (tmp dir + rename).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from jaxselfeval.errors import JSEError
from jaxselfeval.fileio import check_replaceable, restore_aside, swap_dir, temp_dir_beside
from jaxselfeval.gguf_io import gguf_model_dir
from jaxselfeval.lora import merge_lora
from jaxselfeval.model.config import LlamaConfig, read_hf_config
from jaxselfeval.model.llama import Llama, abstract_model, as_dtype, param_shapes
from jaxselfeval.model.probe_head import FILE as PROBE_HEAD_FILE
from jaxselfeval.model.probe_head import ProbeHead
from jaxselfeval.safetensors_io import _Lazy, save_file
from jaxselfeval.sharding import RULES, local_mesh, state_shardings

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")

# our name -> (HF name template, HF dims split into, permutation to our layout)
# "{i}" is the layer index; split/perm give: ours = transpose(reshape(hf, split), perm)
def weight_layout(cfg: LlamaConfig):
    H, K, Dh, D, F = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                      cfg.hidden_size, cfg.intermediate_size)
    a = "model.layers.{i}.self_attn."
    m = "model.layers.{i}.mlp."
    lay = {
        "embed": ("model.embed_tokens.weight", ((0,), (1,)), (cfg.vocab_size, D), (0, 1)),
        "final_norm": ("model.norm.weight", ((0,),), (D,), (0,)),
        "attn_norm": ("model.layers.{i}.input_layernorm.weight", ((0,),), (D,), (0,)),
        "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", ((0,),), (D,), (0,)),
        "wq": (a + "q_proj.weight", ((0, 1), (2,)), (H, Dh, D), (2, 0, 1)),
        "wk": (a + "k_proj.weight", ((0, 1), (2,)), (K, Dh, D), (2, 0, 1)),
        "wv": (a + "v_proj.weight", ((0, 1), (2,)), (K, Dh, D), (2, 0, 1)),
        "wo": (a + "o_proj.weight", ((0,), (1, 2)), (D, H, Dh), (1, 2, 0)),
        "w_gate": (m + "gate_proj.weight", ((0,), (1,)), (F, D), (1, 0)),
        "w_up": (m + "up_proj.weight", ((0,), (1,)), (F, D), (1, 0)),
        "w_down": (m + "down_proj.weight", ((0,), (1,)), (D, F), (1, 0)),
    }
    if not cfg.tie_word_embeddings:
        lay["lm_head"] = ("lm_head.weight", ((0,), (1,)), (cfg.vocab_size, D), (1, 0))
    return lay


class _Reader:
    """Lazy, memory-mapped access to the tensors of an HF directory (single or sharded)."""

    def __init__(self, path: Path):
        self.path = path
        idx = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if idx.exists():
            wm = json.loads(idx.read_text())["weight_map"]
            for f in sorted(set(wm.values())):
                if not (path / f).exists():
                    raise JSEError(
                        f"missing safetensors shard '{f}' (listed in {idx.name}) in '{path}': "
                        "copy the complete checkpoint")
            self.where = wm
        elif single.exists():
            self.where = None
            self._files = {"model.safetensors": safe_open(single, "numpy")}
            self.where = {k: "model.safetensors" for k in self._files["model.safetensors"].keys()}
        else:
            raise JSEError(f"no model.safetensors or model.safetensors.index.json in '{path}'")
        self._files = getattr(self, "_files", {})
        # bare LlamaModel checkpoints have no "model." prefix
        self.prefix_strip = not any(k.startswith("model.") for k in self.where)

    def _name(self, name):
        return name[len("model."):] if self.prefix_strip and name.startswith("model.") else name

    def has(self, name) -> bool:
        return self._name(name) in self.where

    def slice(self, name):
        name = self._name(name)
        if name not in self.where:
            raise JSEError(f"tensor '{name}' is missing from the checkpoint in '{self.path}'")
        f = self.where[name]
        if f not in self._files:
            self._files[f] = safe_open(self.path / f, "numpy")
        return self._files[f].get_slice(name)


def _read_part(sl, groups, split_shape, perm, idx):
    """Read the part of one HF tensor that lands at our per-layer index `idx` (slices).

    The HF tensor viewed as `split_shape` (dims grouped by `groups`, e.g. ((0, 1), (2,)) for
    q_proj [H*Dh, D] -> [H, Dh, D]) and transposed by `perm` is our layout.
    """
    ss = [slice(None)] * len(split_shape)
    for i, s in enumerate(idx):
        ss[perm[i]] = s
    ss = [slice(*s.indices(n)) for s, n in zip(ss, split_shape)]
    hf_idx, post, read_shape = [], [], []
    for g in groups:
        inner = math.prod(split_shape[j] for j in g[1:])
        first = ss[g[0]]
        hf_idx.append(slice(first.start * inner, first.stop * inner))
        read_shape.append(first.stop - first.start)
        post.append(slice(None))
        for j in g[1:]:  # inner dims of a merged group are read whole, then sliced
            read_shape.append(split_shape[j])
            post.append(ss[j])
    arr = np.asarray(sl[tuple(hf_idx)]).reshape(read_shape)[tuple(post)]
    return np.transpose(arr, perm)


def load_pretrained(path: str | os.PathLike, dtype="float32", *, compute_dtype=None,
                    mesh=None, rules=None, lm_head: bool = True) -> Llama:
    """Read an HF Llama directory into our NNX model (optionally sharded over `mesh`).

    dtype: parameter storage dtype; compute_dtype defaults to bfloat16 when dtype is bfloat16.
    """
    path = Path(path)
    if path.suffix == ".gguf":  # a llama.cpp file: converted once into the cache, then read
        path = gguf_model_dir(path)
    if not path.is_dir():
        raise JSEError(f"model directory '{path}' does not exist")
    cfg = read_hf_config(path)
    reader = _Reader(path)
    if not lm_head:  # a backbone for a scalar head: no [D, V] LM head is allocated
        cfg = cfg.replace(tie_word_embeddings=True)
    pdt = as_dtype(dtype)
    cdt = compute_dtype or ("bfloat16" if pdt == jnp.bfloat16 else "float32")
    model = abstract_model(cfg, param_dtype=pdt, compute_dtype=cdt)
    lay = weight_layout(cfg)
    shapes = param_shapes(cfg)
    L = cfg.num_hidden_layers
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules or RULES) if mesh is not None else None

    for name, (shape, _axes) in shapes.items():
        tmpl, groups, split_shape, perm = lay[name]
        hf_shape = tuple(math.prod(split_shape[j] for j in g) for g in groups)
        names = [tmpl.format(i=i) for i in range(L)] if "{i}" in tmpl else [tmpl]
        for n in names:
            got = tuple(reader.slice(n).get_shape())
            if got != hf_shape:
                raise JSEError(f"tensor '{n}' has shape {got}, expected {hf_shape} for this "
                               f"config.json: the weights and config do not match")

        def read(index, names=names, groups=groups, split_shape=split_shape, perm=perm,
                 shape=shape):
            index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
            if len(names) == 1:
                out = _read_part(reader.slice(names[0]), groups, split_shape, perm, index)
            else:  # stacked layers: index[0] selects layers
                out = np.stack([_read_part(reader.slice(names[i]), groups, split_shape, perm,
                                           index[1:]) for i in range(*index[0].indices(L))])
            return out.astype(pdt)

        if shardings is not None:
            arr = jax.make_array_from_callback(shape, shardings[name], read)
        else:
            arr = jnp.asarray(read(tuple(slice(None) for _ in shape)))
        state[name] = state[name].replace(arr)
    model = nnx.merge(graphdef, state)
    model.source_dir = str(path)
    if (path / PROBE_HEAD_FILE).exists():  # the probe's own rows (`model.probe_head`)
        model.probe_head = read_probe_head(path / PROBE_HEAD_FILE, cfg)
    return model


def read_probe_head(file: Path, cfg: LlamaConfig) -> ProbeHead:
    """The `ProbeHead` in `file` (probe_head.safetensors), checked against the model's config."""
    with safe_open(str(file), framework="numpy") as f:
        if set(f.keys()) != {"ids", "delta"}:
            raise JSEError(f"'{file}' holds {sorted(f.keys())}, expected ids and delta: it is not "
                           "a probe head an export wrote; remove it or export again")
        ids, delta = f.get_tensor("ids"), f.get_tensor("delta")
    fits = delta.shape == (len(ids), cfg.hidden_size)
    if not fits or not np.all((ids >= 0) & (ids < cfg.vocab_size)):
        raise JSEError(f"'{file}' does not fit this model (delta {delta.shape}, hidden size "
                       f"{cfg.hidden_size}, vocabulary {cfg.vocab_size}): export it again")
    return ProbeHead(ids, delta)


def load_for_sampling(path, dtype: str = "float32", mesh=None) -> Llama:
    """`load_pretrained(path, dtype)` sharded over `local_mesh(mesh)` (e.g. 'tensor=4': this
    host's devices): each device reads only its slice, and the sampler (`Engine`) then runs on
    that mesh. mesh None or '': one device."""
    return load_pretrained(path, dtype, mesh=local_mesh(mesh))


def _hf_tensors(model: Llama):
    """Yield (HF name, HF shape, fn -> numpy array) in HF order, one tensor at a time."""
    cfg = model.config
    lay = weight_layout(cfg)
    order = [("embed", None)]
    for i in range(cfg.num_hidden_layers):
        order += [(n, i) for n in ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm",
                                   "w_gate", "w_up", "w_down")]
    order += [(n, None) for n in ("final_norm", "lm_head") if n in lay]
    for name, i in order:
        tmpl, groups, split_shape, perm = lay[name]
        hf_shape = tuple(math.prod(split_shape[j] for j in g) for g in groups)
        param = getattr(model, name)[...]

        def get(param=param, i=i, perm=perm, hf_shape=hf_shape):
            x = _to_host(param if i is None else param[i])
            return np.ascontiguousarray(np.transpose(x, np.argsort(perm)).reshape(hf_shape))

        yield tmpl.format(i=i), hf_shape, get


def _to_host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


_EXPORT_FILES = re.compile(r"config\.json|selfeval\.json|probe_head\.safetensors|"
                           r"model\.safetensors(\.index\.json)?|"
                           r"model-\d{5}-of-\d{5}\.safetensors")


def not_an_export(path) -> str | None:
    """None when an export may replace `path`: an empty directory, or an HF model export (a
    directory holding config.json, safetensors weights and only files an export writes:
    TOKENIZER_FILES, selfeval.json, shards); else what is wrong with it. A downloaded model directory with a
    README or LICENSE is not one (those would be lost)."""
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return "is not a directory an export wrote"
    names = {f.name for f in p.iterdir()}
    if not names:  # an empty directory (e.g. made for the export): nothing to lose
        return None
    if "config.json" not in names or not names & {"model.safetensors",
                                                  "model.safetensors.index.json"}:
        return "is not an HF model export (no config.json with safetensors weights)"
    other = sorted(n for n in names if n not in TOKENIZER_FILES and not _EXPORT_FILES.fullmatch(n))
    if other:
        return f"holds files an export does not write (e.g. '{other[0]}')"
    return None


def check_export_target(out, overwrite: bool = False) -> None:
    """Before an export: put back an old export a kill left aside, then refuse (one line) a
    target that holds something other than an HF model export unless `overwrite`. Decided on
    process 0 and shared, so every process stops together (no one left in a collective)."""
    err = None
    if jax.process_index() == 0:
        restore_aside(out)
        try:
            check_replaceable(out, not_an_export, overwrite)
        except JSEError as e:
            err = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if int(multihost_utils.broadcast_one_to_all(np.int32(err is not None))) and err is None:
            err = JSEError(f"process 0 refused to export to '{out}' (see its error)")
    if err is not None:
        raise err


def save_pretrained(model: Llama, out_dir: str | os.PathLike, *, dtype=None,
                    max_shard_bytes: int = 2 * 1024**3, tokenizer_dir=None,
                    overwrite: bool = False) -> Path:
    """Write `model` as an HF directory transformers' LlamaForCausalLM loads.

    One tensor is on the host at a time; shards of at most `max_shard_bytes` with an index when
    more than one. A model with LoRA adapters is written merged (`jaxselfeval.lora.merge_lora`).
    Tokenizer files are copied from `tokenizer_dir` (default: where the model
    was loaded from). The directory appears whole or not at all, and an export already at
    `out_dir` is kept until the new one is in place (`fileio.swap_dir`); something at `out_dir`
    that is not an HF model export is refused unless `overwrite` (`check_export_target`).
    """
    out = Path(out_dir)
    check_export_target(out, overwrite)
    if getattr(model, "lora", None) is not None:  # adapters are exported merged into W
        model = merge_lora(model)
    dt = np.dtype(as_dtype(dtype)) if dtype is not None else np.dtype(model.param_dtype)
    dname = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[dt.name]
    tensors = list(_hf_tensors(model))
    shards, cur, cur_bytes = [], [], 0
    for t in tensors:
        nb = math.prod(t[1]) * dt.itemsize
        if cur and cur_bytes + nb > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(t)
        cur_bytes += nb
    shards.append(cur)
    writer = jax.process_index() == 0
    # the temporary directory beside `out`, so the final rename stays on one disk
    tmp = temp_dir_beside(out) if writer else None
    try:
        weight_map, total = {}, 0
        for si, shard in enumerate(shards):
            fname = ("model.safetensors" if len(shards) == 1
                     else f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors")
            lazy = {name: _Lazy(shape, dt, get) for name, shape, get in shard}
            for name, t in lazy.items():
                weight_map[name] = fname
                total += math.prod(t.shape) * dt.itemsize
            if writer:
                save_file(lazy, str(tmp / fname), metadata={"format": "pt"})
            else:  # the same gathers (collectives on multi-host), in the writer's order
                for name in sorted(lazy):
                    lazy[name].get()
        if not writer:
            return out
        if len(shards) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(model.config.to_hf_dict(dname), indent=2))
        src = tokenizer_dir or getattr(model, "source_dir", None)
        if src:
            for f in TOKENIZER_FILES:
                if (Path(src) / f).exists():
                    shutil.copy2(Path(src) / f, tmp / f)
        if getattr(model, "probe_head", None) is not None:
            save_file(model.probe_head.tensors(), str(tmp / PROBE_HEAD_FILE))
        for f in ("selfeval.json",):  # our own metadata travels with the weights
            if src and (Path(src) / f).exists() and not (tmp / f).exists():
                shutil.copy2(Path(src) / f, tmp / f)
        swap_dir(tmp, out)  # the old export is removed only once the new one is in place
        tmp = None
        return out
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
