"""LoRA adapters for the capability-token fine-tuning.

    model = jse.load_pretrained(path)
    add_lora(model, LoRAConfig(rank=16, alpha=32, targets=("wq", "wv")))
    graphdef, lora, frozen = split_trainable(model)      # train.step: LoRAParam leaves train
    step = make_train_step(graphdef, loss_fn, tx)        # step(lora, frozen, opt, batch)
    jse.save_pretrained(merge_lora(model), out)          # a plain Llama, merged weights

`add_lora` attaches a `LoRA` module (a `jaxselfeval.model.adapter.Adapter`) as `model.lora`;
every target projection of the layer scan then computes W x + (alpha / rank) * B(A x): the
frozen W is used as stored and the adapter's term is added to its f32 output, so training forms
no [in, out] matrix (neither W + A B nor a weight gradient: only [.., r] ones), and a bf16 W
cannot round away a small update. W + scale * A B is formed only by `merge_lora`, for export.
A target W [L, in..., out...] gets A [L, in..., r] (normal, std 1/sqrt(fan_in)) and
B [L, r, out...] (zeros: a fresh adapter is exactly the base model), both float32 `LoRAParam`
with logical axes, so `shard_model` places them like their weight; the low-rank matmuls run in
the model's compute dtype with f32 accumulation.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxselfeval.configs import apply_overrides, find_config, load_yaml
from jaxselfeval.errors import JSEError, closest
from jaxselfeval.model.adapter import Adapter
from jaxselfeval.model.llama import Llama, abstract_model, param_shapes
from jaxselfeval.sharding import shard_model

TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
N_IN = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}  # input dims


LoRAParam = nnx.LoRAParam  # a LoRA factor: the trainer's filter (`train.step.split_trainable`)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (delta scale alpha / r), targets: any of TARGETS. probe_rows: also train
    the LM head's rows of the tokens the trainer names (`add_lora(rows=...)`: the probe's Yes /
    No), a full-rank f32 delta per row on the output side only (a tied head is untied for them
    at export): a linear read of the final state that the adapted layers learn beside."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")
    probe_rows: bool = False

    def __post_init__(self):
        t = self.targets
        t = tuple(x.strip() for x in t.split(",")) if isinstance(t, str) else tuple(t)
        object.__setattr__(self, "targets", t)
        if int(self.rank) < 1:
            raise JSEError(f"lora rank must be >= 1, got {self.rank}")
        if not t:
            raise JSEError(f"lora targets is empty: name some of {', '.join(TARGETS)}")
        for x in t:
            if x not in TARGETS:
                raise JSEError(f"unknown lora target '{x}'{closest(x, TARGETS)}: "
                               f"valid targets are {', '.join(TARGETS)}")
        if len(set(t)) != len(t):
            raise JSEError(f"lora targets {list(t)} name a module twice: list each once")

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise JSEError(f"unknown lora config key '{k}'{closest(k, names)}: "
                               f"use {', '.join(names)}")
        return cls(**d)


def load_lora_config(src=None, overrides: list[str] | None = None) -> LoRAConfig:
    """A LoRAConfig from None (defaults), a dict, a LoRAConfig, or a YAML file (its `lora:`
    section if it has one), with `key=value` overrides (e.g. rank=16, targets=[wq,wv])."""
    if isinstance(src, LoRAConfig):
        d = dataclasses.asdict(src)
    elif src is None:
        d = {}
    elif isinstance(src, dict):
        d = dict(src)
    else:
        d = load_yaml(find_config(src))
        d = d.get("lora", d)
    base = dataclasses.asdict(LoRAConfig())
    LoRAConfig.from_dict(d)  # unknown keys named before merging with the defaults
    base.update(d)
    base["targets"] = list(LoRAConfig(**base).targets)
    return LoRAConfig.from_dict(apply_overrides(base, overrides))


def parse_lora_spec(spec: str | None) -> dict | None:
    """A command line's LoRA settings "rank=16;alpha=32;targets=wq,wv" -> dict (None: no LoRA)."""
    if spec is None:
        return None
    d = {}
    for part in filter(None, (x.strip() for x in spec.split(";"))):
        if "=" not in part:
            raise JSEError(f"bad --lora '{spec}': write key=value;key=value, e.g. rank=16;targets=wq,wv")
        k, v = (x.strip() for x in part.split("=", 1))
        if k == "targets":
            d[k] = v
            continue
        try:
            d[k] = float(v) if "." in v or "e" in v else int(v)
        except ValueError:
            raise JSEError(f"bad --lora value {k}={v!r}: give a number") from None
    return d


def _split_dims(name: str, shape, axes):
    n = N_IN[name]
    return shape[1:1 + n], shape[1 + n:], axes[1:1 + n], axes[1 + n:]


def lora_delta(a, b, scale: float):
    """a [in..., r], b [r, out...] -> scale * a @ b [in..., out...], float32."""
    return scale * jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32),
                                 axes=((a.ndim - 1,), (0,)), precision=jax.lax.Precision.HIGHEST)


def merged_weight(w, a, b, scale: float):
    """One layer: W [in..., out...] + scale * a @ b, computed in f32, stored in W's dtype (the
    export's weights; training never forms it, see `LoRA.delta`)."""
    return (w.astype(jnp.float32) + lora_delta(a, b, scale)).astype(w.dtype)


def low_rank(x, a, b, scale: float, compute_dtype):
    """scale * (x @ a) @ b without forming a @ b: x [B, S, in...], a [in..., r], b [r, out...]
    -> f32 [B, S, out...]; two matmuls in `compute_dtype` with f32 accumulation."""
    B, S = x.shape[:2]
    r = a.shape[-1]
    k = math.prod(a.shape[:-1])
    xa = jnp.dot(x.astype(compute_dtype).reshape(B * S, k),
                 a.astype(compute_dtype).reshape(k, r), preferred_element_type=jnp.float32)
    y = jnp.dot(xa.astype(compute_dtype), b.astype(compute_dtype).reshape(r, -1),
                preferred_element_type=jnp.float32)
    return scale * y.reshape(B, S, *b.shape[1:])


class LoRA(Adapter):
    """Stacked adapters for `config.targets`: `{t}_a` [L, in..., r], `{t}_b` [L, r, out...]."""

    def __init__(self, model_config, config: LoRAConfig, *, rngs: nnx.Rngs, rows=None):
        self.targets = tuple(config.targets)
        self.row_ids = None
        if config.probe_rows:
            if not rows:
                raise JSEError("lora probe_rows needs the rows' token ids: add_lora(rows=[...])")
            self.row_ids = tuple(int(i) for i in rows)
            # the parameter is the delta x sqrt(D): an optimiser step of lr per entry then moves
            # a row's logit by about lr x the mean |entry| of the final state, not D times that
            self.row_scale = 1.0 / math.sqrt(model_config.hidden_size)
            self.row_delta = LoRAParam(jnp.zeros((len(rows), model_config.hidden_size),
                                                 jnp.float32),
                                       logical_axes=("vocab_rows", "embed"))
        self.rank, self.scale = int(config.rank), config.scale
        shapes = param_shapes(model_config)
        L, r = model_config.num_hidden_layers, self.rank
        for t in self.targets:
            shape, axes = shapes[t]
            in_s, out_s, in_ax, out_ax = _split_dims(t, shape, axes)
            std = 1.0 / math.sqrt(math.prod(in_s))
            a = std * jax.random.normal(rngs.params(), (L, *in_s, r), jnp.float32)
            setattr(self, f"{t}_a", LoRAParam(a, logical_axes=("layers", *in_ax, "lora_rank")))
            setattr(self, f"{t}_b", LoRAParam(jnp.zeros((L, r, *out_s), jnp.float32),
                                              logical_axes=("layers", "lora_rank", *out_ax)))

    def stacked(self) -> dict:
        """target -> (A [L, in..., r], B [L, r, out...]) for the layer scan."""
        return {t: (getattr(self, f"{t}_a")[...], getattr(self, f"{t}_b")[...])
                for t in self.targets}

    def vocab_rows(self):
        """(ids int32 [K], delta f32 [K, D]) when probe_rows, else None."""
        if self.row_ids is None:
            return None
        return jnp.asarray(self.row_ids, jnp.int32), self.row_scale * self.row_delta[...]

    def set_vocab_rows(self, delta):
        """Set the rows' delta f32 [K, D] (e.g. `selfeval.probe_fit`'s starting point)."""
        self.row_delta.value = jnp.asarray(delta, jnp.float32) / self.row_scale

    def delta(self, name, x, params, compute_dtype, in_dims):
        """This layer's scale * B(A x) for target `name`: x [B, S, in...] -> f32 [B, S, out...]."""
        a, b = params
        return low_rank(x, a, b, self.scale, compute_dtype)


def add_lora(model: Llama, config: LoRAConfig | dict | None = None, *, seed: int = 0,
             mesh=None, rows=None) -> Llama:
    """Attach fresh adapters as `model.lora` (in place; B = 0, so logits are unchanged).
    With `mesh`, the adapters are placed by their logical axes. rows: the token ids whose LM-head
    rows `probe_rows` trains. Returns the model."""
    cfg = config if isinstance(config, LoRAConfig) else load_lora_config(config)
    if model.lora is not None:
        raise JSEError("the model already has LoRA adapters: merge_lora(model) first")
    model.lora = LoRA(model.config, cfg, rngs=nnx.Rngs(seed), rows=rows)
    if mesh is not None:
        shard_model(model.lora, mesh)
    return model


def merge_lora(model: Llama) -> Llama:
    """A plain Llama (no adapters) whose target weights are W + scale * A @ B; same dtypes and
    shardings. Trained vocabulary rows (`probe_rows`) are added to the LM head's columns; a tied
    head is untied for them (the head becomes the embedding, transposed, plus the rows: the
    input embedding stays as it was). A probe head (`model.probe_head`) is kept as it is. The
    input model is not changed. A model without adapters is returned as is."""
    lora = model.lora
    if lora is None:
        return model
    rows = lora.vocab_rows()
    untie = rows is not None and model.config.tie_word_embeddings
    cfg = model.config.replace(tie_word_embeddings=False) if untie else model.config
    out = abstract_model(cfg, param_dtype=model.param_dtype, compute_dtype=model.compute_dtype)
    graphdef, state = nnx.split(out)
    merge_stack = jax.vmap(merged_weight, in_axes=(0, 0, 0, None))
    for name in param_shapes(model.config):
        w = getattr(model, name)[...]
        if name in lora.targets:
            a, b = getattr(lora, f"{name}_a")[...], getattr(lora, f"{name}_b")[...]
            w = jax.jit(merge_stack, static_argnums=3, out_shardings=w.sharding)(w, a, b,
                                                                                lora.scale)
        state[name] = state[name].replace(w)
    if rows is not None:  # the head's columns of those tokens: [D, V]
        ids, d = rows
        w = model.embed[...].T if untie else state["lm_head"][...]
        w = w.at[:, ids].set((w[:, ids].astype(jnp.float32) + d.T).astype(w.dtype))
        state["lm_head"] = state["lm_head"].replace(w)
    out = nnx.merge(graphdef, state)
    out.remat = model.remat
    out.attention_impl = model.attention_impl
    out.probe_head = model.probe_head  # the probe's own rows stay the probe's
    if hasattr(model, "source_dir"):
        out.source_dir = model.source_dir
    return out


def count_lora_params(model: Llama) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, LoRAParam)))
