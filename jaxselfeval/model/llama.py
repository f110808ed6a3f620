"""Llama 3.x in Flax NNX: stacked layers run with `lax.scan`, GQA attention, RoPE, SwiGLU.

Parameters carry `logical_axes` metadata (see `jaxselfeval.sharding`). Layer parameters are
stacked on a leading `layers` axis, so a 32-layer model compiles as fast as a 2-layer one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from jaxselfeval.model.adapter import Adapter
from jaxselfeval.model.axes import batch_axis
from jaxselfeval.model.attention import IMPLS, Segment, attention, platform
from jaxselfeval.model.cache import KVCache
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.model.rope import apply_rope, inv_frequencies, rope_tables

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


def shard_batch(x):
    """Constrain activations [B, ...] to be split on B over the (data, fsdp) axes of the mesh set
    with `jax.set_mesh` (FSDP then gathers weights, not activations). No-op without a mesh or
    when B does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    axis = None if mesh.empty else batch_axis(mesh, x.shape[0])
    return x if axis is None else jax.lax.with_sharding_constraint(x, PartitionSpec(axis))


def rms_norm(x, w, eps):
    """x: [..., D] -> f32 normalised, times weight (HF order: normalise in f32, cast, scale)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w.astype(jnp.float32) * xf


def _matmul(x, w, cd, in_dims: int = 1):
    """x [B, S, *in] @ w [*in, *out] -> f32 [B, S, *out], as ONE 2-D matmul [B*S, in] x [in, out]
    in `cd` with f32 accumulation (XLA:CPU runs the weight gradient of a 2-D matmul ~2x faster
    than that of the same contraction written over batch and sequence axes)."""
    B, S = x.shape[:2]
    w_in, w_out = w.shape[:in_dims], w.shape[in_dims:]
    k = 1
    for d in w_in:
        k *= d
    y = jnp.dot(x.astype(cd).reshape(B * S, k), w.astype(cd).reshape(k, -1),
                preferred_element_type=jnp.float32)
    return y.reshape(B, S, *w_out)


# Up to this many rows (batch x seq) a CPU matmul against weights stored transposed runs as
# w^T @ x^T. Measured on a 2-core AVX2 EPYC (medians of alternating calls, f32 GFLOP/s):
# [16, 768] x [768, 2048] 62 -> 108, x [768, 32000] 57 -> 98; at 128 rows and more it is no faster
SMALL_ROWS = 64


def _matmul_t(x, wt, cd):
    """x [..., in] @ wt[out, in]^T -> f32 [..., out]: weights stored transposed ([out, in], the
    layout `split_layers(transposed=True)` keeps and a tied LM head has). With at most SMALL_ROWS
    rows on a CPU it computes wt @ x^T [out, rows] and transposes that: XLA:CPU runs a product
    with the long side on the left about twice as fast (f32 and bf16). The barrier keeps XLA from
    folding the transpose back into the product, which would undo the gain."""
    x, w = x.astype(cd), wt.astype(cd)
    rows = x.size // x.shape[-1]
    if rows > SMALL_ROWS or platform() != "cpu":
        return jnp.einsum("...i,oi->...o", x, w, preferred_element_type=jnp.float32)
    y = jax.lax.dot_general(w, x.reshape(rows, -1), (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(y).T.reshape(*x.shape[:-1], w.shape[0])


class Llama(nnx.Module):
    """Llama causal LM. `model(tokens)` -> f32 logits [batch, seq, vocab] (no cache).

    param_dtype: storage dtype of the weights (float32 or bfloat16).
    compute_dtype: matmul input dtype; accumulation is always float32.
    attention_impl: auto | exact | blockwise | splash | cudnn (`model.attention.choose_impl`:
    auto keeps the exact path for short shapes and decode and avoids [S, T] scores beyond).
    lora: None, or an `Adapter` (e.g. `jaxselfeval.lora.add_lora`) whose low-rank terms the
    layers add to their projections.
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
        self.lora: Adapter | None = nnx.data(None)
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
        logits, _ = self.forward(tokens, positions)
        return logits

    def forward(self, tokens, positions=None, *, cache: KVCache | None = None,
                prefix: KVCache | None = None, write: bool = True, last_only: bool = False,
                return_hidden: bool = False, exit_layer: int = 0, attend_cache: bool = True,
                use_adapter: bool = True, layers: list | None = None):
        """One pass over `tokens` [B, S] at `positions` [B, S] (-1 = padding, invisible).

        Attends to: `prefix` (a cache of G prompts shared by B/G consecutive rows each, read
        only), `cache` (the rows' own cache, slots written before this call), and the current
        tokens (causally by position). If `cache` is given and `write`, the current keys/values
        are stored at slots [cache.index, cache.index + S) and the new cache is returned.
        Returns (logits f32 [B, S or 1, V] (or final hidden [B, S, D] if return_hidden), cache).
        exit_layer > 0 (training, no cache): the first item is (logits, exit logits), the exit
        logits read after layer `exit_layer` through the final norm and LM head (an early exit).
        attend_cache=False: `cache` is known to be empty (a prefill): it is written, not read.
        use_adapter=False: the adapter (`self.lora`) is left out: the frozen base model's pass.
        layers: the layer weights as L separate dicts (`split_layers`: q/k/v and gate/up fused),
        run unrolled instead of a scan over the stacked [L, ...] arrays, whose per-layer slices
        XLA:CPU copies (a quarter of a 100M model's decode step there); no adapter, no
        exit_layer.
        """
        cfg = self.config
        B, S = tokens.shape
        contiguous = positions is None  # positions 0..S-1: fused kernels need no padding mask
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
        positions = positions.astype(jnp.int32)
        cos, sin = rope_tables(inv_frequencies(cfg), jnp.maximum(positions, 0))
        cd = self.compute_dtype
        adapter = self.lora if use_adapter else None
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.float32)
        rows = adapter.vocab_rows() if adapter is not None else None
        if rows is not None and self.config.tie_word_embeddings:  # tied: the input rows move too
            x = x + jnp.einsum("bsk,kd->bsd", (tokens[..., None] == rows[0]).astype(jnp.float32),
                               rows[1])
        x = shard_batch(x)
        if layers is not None and (adapter is not None or exit_layer):
            raise ValueError("layers= runs the plain model: no adapter, no exit_layer")
        xs = {} if layers is not None else {"p": self._layer_params(adapter)}
        read_cache = cache is not None and attend_cache
        if read_cache:
            xs["ck"], xs["cv"] = cache.k, cache.v
        if prefix is not None:
            xs["pk"], xs["pv"] = prefix.k, prefix.v

        def layer(x, xs, last=False):  # last: only the last position's output is read after it
            p = xs["p"]

            def proj(name, h, in_dims=1):  # h @ W (+ the adapter's low-rank term), f32
                if name + "_t" in p:  # stored transposed (`split_layers(transposed=True)`)
                    return _matmul_t(h.reshape(*h.shape[:2], -1), p[name + "_t"], cd)
                y = _matmul(h, p[name], cd, in_dims)
                if adapter is not None and name in p["lora"]:
                    y = y + adapter.delta(name, h, p["lora"][name], cd, in_dims)
                return y

            x = shard_batch(x)
            h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps).astype(cd)
            if "wqkv" in p or "wqkv_t" in p:  # fused copies (`split_layers`): one matmul
                qkv = proj("wqkv", h)
                H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
                q = qkv[..., :H * Dh].reshape(B, S, H, Dh)
                k = qkv[..., H * Dh:(H + K) * Dh].reshape(B, S, K, Dh)
                v = qkv[..., (H + K) * Dh:].reshape(B, S, K, Dh)
            else:
                q, k, v = (proj(n, h) for n in ("wq", "wk", "wv"))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            kv_dtype = cache.k.dtype if cache is not None else cd
            k, v = k.astype(kv_dtype), v.astype(kv_dtype)
            q_pos = positions
            if last:  # every position's keys and values, but the last position's query, residual
                q, q_pos, x = q[:, -1:], positions[:, -1:], x[:, -1:]  # and MLP alone
            segs = []
            if prefix is not None:
                segs.append(Segment(xs["pk"], xs["pv"], prefix.pos))
            if read_cache:
                segs.append(Segment(xs["ck"], xs["cv"], cache.pos))
            segs.append(Segment(k, v, positions))
            a = attention(q, q_pos, segs, compute_dtype=cd, impl=self.attention_impl,
                          contiguous=contiguous and prefix is None and cache is None and not last)
            x = x + proj("wo", a.astype(cd), in_dims=2)
            h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps).astype(cd)
            if "w_gu" in p or "w_gu_t" in p:
                F = cfg.intermediate_size
                gu = proj("w_gu", h)
                g, u = gu[..., :F], gu[..., F:]
            else:
                g, u = proj("w_gate", h), proj("w_up", h)
            x = x + proj("w_down", (jax.nn.silu(g) * u).astype(cd))
            return x, (k, v)

        scanned = layer
        if self.remat:
            scanned = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
        if exit_layer:
            x, _ = jax.lax.scan(scanned, x, jax.tree.map(lambda a: a[:exit_layer], xs))
            early = self.logits(rms_norm(x, self.final_norm[...], cfg.rms_norm_eps),
                                use_adapter=use_adapter)
            x, _ = jax.lax.scan(scanned, x, jax.tree.map(lambda a: a[exit_layer:], xs))
            return (self.logits(rms_norm(x, self.final_norm[...], cfg.rms_norm_eps),
                                use_adapter=use_adapter), early), None
        if layers is not None:
            kvs = []
            L = len(layers["blocks"])  # unrolled: the last layer skips what last_only drops
            for i, p in enumerate(layers["blocks"]):
                x, kv = layer(x, dict({n: a[i] for n, a in xs.items()}, p=p),
                              last_only and i == L - 1)
                kvs.append(kv)
            new_k, new_v = (jnp.stack(t) for t in zip(*kvs))
        else:
            x, (new_k, new_v) = jax.lax.scan(scanned, x, xs)

        new_cache = None
        if cache is not None and write:
            idx = cache.index
            z = jnp.zeros((), jnp.int32)
            new_cache = KVCache(
                k=jax.lax.dynamic_update_slice(cache.k, new_k, (z, z, idx, z, z)),
                v=jax.lax.dynamic_update_slice(cache.v, new_v, (z, z, idx, z, z)),
                pos=jax.lax.dynamic_update_slice(cache.pos, positions, (z, idx)),
                index=idx + S,
            )
        elif cache is not None:
            new_cache = cache
        if last_only:
            x = x[:, -1:]
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        if return_hidden:
            return x, new_cache
        return self.logits(x, None if layers is None else layers.get("head_t"),
                           use_adapter=use_adapter), new_cache

    def _layer_params(self, adapter: Adapter | None):
        """Stacked [L, ...] arrays the layer scan slices; the adapter (if given) adds its own
        stacked arrays under "lora"."""
        p = {n: getattr(self, n)[...] for n in LAYER_PARAMS}
        if adapter is not None:
            p["lora"] = adapter.stacked()
        return p

    def _rows_delta(self, h, use_adapter: bool):
        """The adapter's vocabulary rows (`Adapter.vocab_rows`): (ids [K], h @ delta.T f32
        [..., K]), or None."""
        rows = self.lora.vocab_rows() if use_adapter and self.lora is not None else None
        if rows is None:
            return None
        return rows[0], jnp.einsum("...d,kd->...k", h.astype(jnp.float32), rows[1],
                                   precision=jax.lax.Precision.HIGHEST)

    def token_logits(self, h, ids, *, use_adapter: bool = True):
        """h: f32 [..., D] final-normed hidden, ids: int32 [K] -> f32 logits [..., K] of those
        tokens only (the LM head's K columns: a probe reads two of the vocabulary's logits)."""
        cd = self.compute_dtype
        if self.config.tie_word_embeddings:
            w = jnp.take(self.embed[...], ids, axis=0)  # [K, D]
            out = jnp.einsum("...d,kd->...k", h.astype(cd), w.astype(cd),
                             preferred_element_type=jnp.float32)
        else:
            w = jnp.take(self.lm_head[...], ids, axis=1)  # [D, K]
            out = jnp.einsum("...d,dk->...k", h.astype(cd), w.astype(cd),
                             preferred_element_type=jnp.float32)
        rows = self._rows_delta(h, use_adapter)
        if rows is not None:  # each asked id that is an adapted row gets that row's term
            out = out + jnp.einsum("...r,kr->...k", rows[1],
                                   (ids[:, None] == rows[0][None]).astype(jnp.float32))
        return out

    def logits(self, h, head_t=None, *, use_adapter: bool = True):
        """h: f32 [..., D] final-normed hidden -> f32 logits [..., V]. head_t: the LM head
        transposed, [V, D] (`split_layers(transposed=True)` of an untied model), if at hand.
        The adapter's vocabulary rows (if any) are added unless use_adapter is False."""
        cd = self.compute_dtype
        if self.config.tie_word_embeddings or head_t is not None:  # a [V, D] head
            out = _matmul_t(h, self.embed[...] if head_t is None else head_t, cd)
        else:
            out = jnp.einsum("...d,dv->...v", h.astype(cd), self.lm_head[...].astype(cd),
                             preferred_element_type=jnp.float32)
        rows = self._rows_delta(h, use_adapter)
        if rows is not None:
            out = out.at[..., rows[0]].add(rows[1])
        return out


FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gu": ("w_gate", "w_up")}


def split_layers(model: Llama, transposed: bool = False) -> dict:
    """The layer weights as L dicts of separate arrays (copies of the stacked [L, ...] slices),
    for `Llama.forward(layers=...)`: {"blocks": [L dicts]}, with q/k/v and gate/up each
    concatenated into one matrix (wqkv [D, (H + 2 K) Dh], w_gu [D, 2 F]): two matmuls where there
    were five, each wider (on a CPU a [16, 768] x [768, 4096] product runs faster than two of
    half the width).
    transposed: every matrix stored [out, in] under "<name>_t" (wqkv_t, wo_t [D, H Dh], w_gu_t,
    w_down_t), and an untied LM head as "head_t" [V, D]: the layout `_matmul_t` runs fastest on
    a CPU for the few rows of a decode step."""
    w = {n: getattr(model, n)[...] for n in LAYER_PARAMS}
    L = model.config.num_hidden_layers

    def matrix(parts, i):  # [in, out]: wq's [D, H, Dh] as [D, H Dh], wo's [H, Dh, D] as [H Dh, D]
        return jnp.concatenate([w[n][i].reshape(-1, w[n].shape[-1]) if n == "wo"
                                else w[n][i].reshape(w[n].shape[1], -1) for n in parts], -1)

    def layer(i):  # one layer's copies at a time: no fused [L, ...] temporary
        out = {n: jnp.array(w[n][i], copy=True) for n in ("attn_norm", "mlp_norm")}
        for name, parts in dict(FUSED, wo=("wo",), w_down=("w_down",)).items():
            if transposed:  # the transpose is a new array: no further copy
                out[name + "_t"] = matrix(parts, i).T
            elif len(parts) > 1:  # the concatenation is a new array
                out[name] = matrix(parts, i)
            else:  # wo and w_down in their own shapes (`proj`'s in_dims)
                out[name] = jnp.array(w[name][i], copy=True)
        return out

    out = {"blocks": [layer(i) for i in range(L)]}
    if transposed and not model.config.tie_word_embeddings:
        out["head_t"] = model.lm_head[...].T
    return out


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
