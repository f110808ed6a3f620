"""Llama 3.x in Flax NNX: stacked layers run with `lax.scan`, GQA attention, RoPE, SwiGLU.

Parameters carry `logical_axes` metadata (see `jaxselfeval.sharding`). Layer parameters are
stacked on a leading `layers` axis, so a 32-layer model compiles as fast as a 2-layer one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxselfeval.model.adapter import Adapter
from jaxselfeval.model.attention import IMPLS, Segment
from jaxselfeval.model.axes import shard_batch
from jaxselfeval.model.block import LayerKV, Rope, StackedBlock, decoder_block, rms_norm
from jaxselfeval.model.cache import KVCache
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.model.probe_head import ProbeHead
from jaxselfeval.model.rope import inv_frequencies, rope_tables

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(d):
    if isinstance(d, str):
        if d not in DTYPES:
            from jaxselfeval.errors import JSEError

            raise JSEError(f"unknown dtype '{d}': use one of {', '.join(DTYPES)}")
        return DTYPES[d]
    return d


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """name -> (shape, logical axes) for every parameter of the model."""
    L, D, F, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    shapes = {
        "embed": ((V, D), ("vocab", "embed")),
        "attn_norm": ((L, D), ("layers", "norm")),
        "wq": ((L, D, H, Dh), ("layers", "embed", "q_heads", "head_dim")),
        "wk": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ((L, H, Dh, D), ("layers", "q_heads", "head_dim", "embed")),
        "mlp_norm": ((L, D), ("layers", "norm")),
        "w_gate": ((L, D, F), ("layers", "embed", "mlp")),
        "w_up": ((L, D, F), ("layers", "embed", "mlp")),
        "w_down": ((L, F, D), ("layers", "mlp", "embed")),
        "final_norm": ((D,), ("norm",)),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = ((D, V), ("embed", "vocab"))
    return shapes


LAYER_PARAMS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


class Llama(nnx.Module):
    """Llama causal LM. `model(tokens)` -> f32 logits [batch, seq, vocab] (no cache).

    param_dtype: storage dtype of the weights (float32 or bfloat16).
    compute_dtype: matmul input dtype; accumulation is always float32.
    attention_impl: auto | exact | blockwise | splash | cudnn (`model.attention.choose_impl`:
    auto keeps the exact path for short shapes and decode and avoids [S, T] scores beyond).
    platform: the platform attention kernels are chosen for when the attention context names
    none (None: JAX's default backend; `plan` sets the chip it compiles for).
    lora: None, or an `Adapter` (e.g. `jaxselfeval.lora.add_lora`) whose low-rank terms the
    layers add to their projections.
    probe_head: None, or a `ProbeHead`: rows added to a few tokens' logits where the probe reads
    them (`token_logits`), not where the policy samples (`logits`).
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs, param_dtype="float32",
                 compute_dtype="float32", remat: bool = False, attention_impl: str = "auto"):
        if attention_impl not in IMPLS:
            from jaxselfeval.errors import JSEError

            raise JSEError(f"unknown attention_impl '{attention_impl}': use one of "
                           f"{', '.join(IMPLS)}")
        self.config = config
        self.param_dtype = as_dtype(param_dtype)
        self.compute_dtype = as_dtype(compute_dtype)
        self.remat = remat
        self.attention_impl = attention_impl
        self.platform: str | None = None  # kernels chosen for it (None: JAX's default backend)
        self.lora: Adapter | None = nnx.data(None)
        self.probe_head: ProbeHead | None = nnx.data(None)
        std = 0.02
        for name, (shape, axes) in param_shapes(config).items():
            if name.endswith("norm"):
                val = jnp.ones(shape, self.param_dtype)
            else:
                val = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(
                    self.param_dtype)
            setattr(self, name, nnx.Param(val, logical_axes=axes))

    # ------------------------------------------------------------------ forward
    def __call__(self, tokens, attention_mask=None):
        """tokens: int32 [batch, seq]; attention_mask: optional [batch, seq] 1/0 (left padding).
        Returns f32 logits [batch, seq, vocab]."""
        positions = None
        if attention_mask is not None:
            m = attention_mask.astype(jnp.int32)
            positions = jnp.where(m > 0, jnp.cumsum(m, axis=-1) - 1, -1)
        h, _ = self.forward(tokens, AttentionContext(positions))
        return self.logits(h)

    def forward(self, tokens, ctx: AttentionContext | None = None):
        """One pass over `tokens` [B, S] in the attention context `ctx` (what it attends to and
        writes; default: the tokens alone, positions 0..S-1). Returns (final-normed hidden
        states f32 [B, S, D] ([B, 1, D] if ctx.last_only), the new cache if ctx writes one,
        else ctx.cache). `logits(hidden)` reads the vocabulary."""
        ctx = ctx if ctx is not None else AttentionContext()
        x, kv = self.fold(self.embed_tokens(tokens), ctx)
        return self._finish(x, kv, ctx, ctx.resolved_positions(tokens.shape)[0])

    def embed_tokens(self, tokens):
        """tokens int32 [B, S] -> f32 [B, S, D]."""
        return shard_batch(jnp.take(self.embed[...], tokens, axis=0).astype(jnp.float32))

    def norm(self, x):
        """The final RMS norm: x [..., D] -> f32 [..., D]."""
        return rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)

    def fold(self, x, ctx: AttentionContext, *, start: int = 0, stop: int | None = None):
        """Layers [start, stop) over x f32 [B, S, D] in `ctx`, as a scan over the stacked
        weights (rematerialised in the backward pass if `remat`). Returns (x, (k, v) of this
        call's tokens [stop - start, B, S, kv_heads, head_dim])."""
        positions, run = self._block_inputs(ctx, x.shape[:2])
        p = self.stacked_weights()
        if self.lora is not None:
            p["lora"] = self.lora.stacked()
        xs = {"p": p, **ctx_layer_kv(ctx)}
        if start or stop is not None:
            xs = jax.tree.map(lambda a: a[start:stop], xs)
        adapter = self.lora

        def layer(x, xs):
            return run(StackedBlock(xs["p"], adapter), x, layer_kv(ctx, xs))

        if self.remat:
            layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
        return jax.lax.scan(layer, x, xs)

    def forward_unrolled(self, blocks, tokens, ctx: AttentionContext):
        """`forward` with the layers unrolled over `blocks`: L weights of the block protocol
        (`model.block`), e.g. a backend's own layout (`backends.cpu.FusedBlock`); the last layer
        computes only the last position when ctx.last_only. The plain model: no adapter."""
        x = self.embed_tokens(tokens)
        positions, run = self._block_inputs(ctx, tokens.shape)
        kv_all = ctx_layer_kv(ctx)
        kvs = []
        for i, w in enumerate(blocks):
            x, kv = run(w, x, layer_kv(ctx, {n: a[i] for n, a in kv_all.items()}),
                        last=ctx.last_only and i == len(blocks) - 1)
            kvs.append(kv)
        kv = tuple(jnp.stack(t) for t in zip(*kvs))
        return self._finish(x, kv, ctx, positions)

    def stacked_weights(self) -> dict:
        """The layer weights the fold slices: name -> [L, ...] (LAYER_PARAMS)."""
        return {n: getattr(self, n)[...] for n in LAYER_PARAMS}

    def _block_inputs(self, ctx: AttentionContext, shape):
        """(positions int32 [B, S], run(w, x, kv, last=False)): `decoder_block` bound to what a
        pass of `shape` (B, S) shares across its layers (RoPE tables, kernel platform, cache
        dtype)."""
        positions, contiguous = ctx.resolved_positions(shape)
        rope = Rope(*rope_tables(inv_frequencies(self.config), jnp.maximum(positions, 0)))
        kv_dtype = ctx.cache.k.dtype if ctx.cache is not None else self.compute_dtype
        platform = ctx.platform or self.platform or jax.default_backend()

        def run(w, x, kv, last=False):
            return decoder_block(w, x, rope, positions, kv, self.config, cd=self.compute_dtype,
                                 impl=self.attention_impl, platform=platform,
                                 contiguous=contiguous, kv_dtype=kv_dtype, last=last)

        return positions, run

    def _finish(self, x, kv, ctx: AttentionContext, positions):
        """(final-normed hidden [B, S or 1, D], the updated cache) after the layers."""
        if ctx.last_only:
            x = x[:, -1:]
        return self.norm(x), updated_cache(ctx, kv, positions)

    def _rows_delta(self, h):
        """The adapter's vocabulary rows (`Adapter.vocab_rows`): (ids [K], h @ delta.T f32
        [..., K]), or None."""
        rows = self.lora.vocab_rows() if self.lora is not None else None
        return None if rows is None else row_terms(h, rows)

    def head_t(self):
        """The LM head as [V, D]: the tied embedding, or the untied head transposed."""
        return self.embed[...] if self.config.tie_word_embeddings else self.lm_head[...].T

    def token_logits(self, h, ids):
        """h: f32 [..., D] final-normed hidden, ids: int32 [K] -> f32 logits [..., K] of those
        tokens only (the LM head's K columns: a probe reads two of the vocabulary's logits),
        plus the probe head's rows, if any."""
        cd = self.compute_dtype
        if self.config.tie_word_embeddings:
            w = jnp.take(self.embed[...], ids, axis=0)  # [K, D]
            out = jnp.einsum("...d,kd->...k", h.astype(cd), w.astype(cd),
                             preferred_element_type=jnp.float32)
        else:
            w = jnp.take(self.lm_head[...], ids, axis=1)  # [D, K]
            out = jnp.einsum("...d,dk->...k", h.astype(cd), w.astype(cd),
                             preferred_element_type=jnp.float32)
        for rows in (self.lora.vocab_rows() if self.lora is not None else None,
                     self.probe_head.rows() if self.probe_head is not None else None):
            if rows is not None:  # each asked id that is one of these rows gets its term
                row_ids, terms = row_terms(h, rows)
                out = out + jnp.einsum("...r,kr->...k", terms,
                                       (ids[:, None] == row_ids[None]).astype(jnp.float32))
        return out

    def logits(self, h):
        """h: f32 [..., D] final-normed hidden -> f32 logits [..., V] (plus the adapter's
        vocabulary rows, if any)."""
        cd = self.compute_dtype
        if self.config.tie_word_embeddings:
            out = jnp.einsum("...d,vd->...v", h.astype(cd), self.embed[...].astype(cd),
                             preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("...d,dv->...v", h.astype(cd), self.lm_head[...].astype(cd),
                             preferred_element_type=jnp.float32)
        rows = self._rows_delta(h)
        if rows is not None:
            out = out.at[..., rows[0]].add(rows[1])
        return out


def row_terms(h, rows):
    """rows (ids int32 [K], delta f32 [K, D]) of a few vocabulary rows, at final-normed h
    [..., D] -> (ids, h . delta f32 [..., K]): what they add to those tokens' logits."""
    return rows[0], jnp.einsum("...d,kd->...k", h.astype(jnp.float32), rows[1],
                               precision=jax.lax.Precision.HIGHEST)


def ctx_layer_kv(ctx: AttentionContext) -> dict:
    """The per-layer [L, ...] cache arrays a fold slices: prefix and own cache keys / values."""
    out = {}
    if ctx.prefix is not None:
        out["pk"], out["pv"] = ctx.prefix.k, ctx.prefix.v
    if ctx.cache is not None and ctx.read_cache:
        out["ck"], out["cv"] = ctx.cache.k, ctx.cache.v
    return out


def layer_kv(ctx: AttentionContext, xs: dict) -> LayerKV:
    """One layer's segments besides its own tokens, from its slice `xs` of `ctx_layer_kv`."""
    return LayerKV(Segment(xs["pk"], xs["pv"], ctx.prefix.pos) if "pk" in xs else None,
                   Segment(xs["ck"], xs["cv"], ctx.cache.pos) if "ck" in xs else None)


def updated_cache(ctx: AttentionContext, kv, positions):
    """ctx.cache with this call's keys / values (k, v [L, B, S, kv_heads, head_dim]) written at
    slots [index, index + S) when ctx writes, else ctx.cache as it was (or None)."""
    cache = ctx.cache
    if cache is None or not ctx.write:
        return cache
    new_k, new_v = kv
    idx = cache.index
    z = jnp.zeros((), jnp.int32)
    return KVCache(k=jax.lax.dynamic_update_slice(cache.k, new_k, (z, z, idx, z, z)),
                   v=jax.lax.dynamic_update_slice(cache.v, new_v, (z, z, idx, z, z)),
                   pos=jax.lax.dynamic_update_slice(cache.pos, positions, (z, idx)),
                   index=idx + positions.shape[1])


def layer_bytes(model: Llama) -> int:
    """Bytes of the stacked layer weights."""
    return sum(getattr(model, n)[...].nbytes for n in LAYER_PARAMS)


def create_model(cfg: LlamaConfig, *, seed: int = 0, param_dtype="float32",
                 compute_dtype="float32", attention_impl: str = "auto") -> Llama:
    """A randomly initialised model (normal(0, 0.02) weights, unit norms)."""
    return Llama(cfg, rngs=nnx.Rngs(seed), param_dtype=param_dtype, compute_dtype=compute_dtype,
                 attention_impl=attention_impl)


def abstract_model(cfg: LlamaConfig, *, param_dtype="float32", compute_dtype="float32",
                   attention_impl: str = "auto") -> Llama:
    """The model with ShapeDtypeStruct leaves: no memory allocated (`jax.eval_shape`)."""
    return nnx.eval_shape(lambda: create_model(cfg, param_dtype=param_dtype,
                                               compute_dtype=compute_dtype,
                                               attention_impl=attention_impl))


def count_params(model: Llama) -> int:
    state = nnx.state(model, nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))
