"""The sampling engine: prefill once, branch to N candidates, decode, probe, prune, restart.

Prompts are prefilled once into a *prompt cache* of G rows (left-padded to a bucketed length).
Candidates are B = G * N rows with their own (suffix) cache; every forward attends to the prompt
cache as a shared segment (no copy per candidate). All jitted pieces take the model as
(graphdef, state): split outside jit, merged inside, so each shape compiles once.

A model whose parameters are sharded over a mesh (`load_pretrained(..., mesh=...)`) samples on
that mesh: every jitted piece is traced under `jax.set_mesh`, so activations and caches split
their batch over the (data, fsdp) axes while weights follow their logical axes (tensor, fsdp).
The tokens drawn do not depend on the mesh (sampling keys are per prompt and candidate).
"""

from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxselfeval.backends import cpu
from jaxselfeval.errors import JSEError
from jaxselfeval.model.cache import KVCache, init_cache
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.model.llama import layer_bytes
from jaxselfeval.sample.probe import no_share
from jaxselfeval.sample.sampling import row_keys, sample_tokens, token_logprob


def bucket(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (>= minimum): few distinct shapes, few compiles."""
    b = minimum
    while b < n:
        b *= 2
    return b


def left_pad(seqs: Sequence[Sequence[int]], length: int, rows: int | None = None):
    """Token rows right-aligned in [rows, length] (default rows: len(seqs)) -> (tokens int32,
    positions int32: 0.. over each row's own tokens, -1 on padding and on missing rows)."""
    toks = np.zeros((rows or len(seqs), length), np.int32)
    pos = np.full((rows or len(seqs), length), -1, np.int32)
    for i, s in enumerate(seqs):
        toks[i, length - len(s):] = s
        pos[i, length - len(s):] = np.arange(len(s))
    return toks, pos


def windows(slots: int, first: int = 32) -> list[int]:
    """The cache windows decode runs through: 32, 64, 128, ... up to `slots` (the last one)."""
    out, w = [], first
    while w < slots:
        out.append(w)
        w *= 2
    return out + [slots]


class Prompts(NamedTuple):
    """The shared prompt cache. cache: KVCache of G rows; length int32 [G]; last_logits f32 [G, V];
    prompt_id int32 [G] (global ids, for keys)."""

    cache: KVCache
    length: jax.Array
    last_logits: jax.Array
    prompt_id: jax.Array


class Candidates(NamedTuple):
    """B = G * N candidate rows, N consecutive rows per prompt.

    cache: own KVCache [B rows, T slots]; tokens int32 [B, T] emitted tokens (pad -1);
    next_token int32 [B] sampled, not yet emitted; length int32 [B] tokens emitted;
    done bool [B] emitted a stop token; temperature f32 [B]; top_p f32 [B];
    prompt_id, cand_id int32 [B]; start int32 [B] position of the first generated token;
    next_logprob f32 [B] log p(next_token) under the model (temperature 1, whatever it was
    sampled at); logprob f32 [B] the sum of that over the emitted tokens (`mean_logprob`).
    """

    cache: KVCache
    tokens: jax.Array
    next_token: jax.Array
    length: jax.Array
    done: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    prompt_id: jax.Array
    cand_id: jax.Array
    start: jax.Array
    next_logprob: jax.Array
    logprob: jax.Array

    @property
    def step(self) -> int:
        return int(self.cache.index)


def model_mesh(model):
    """The mesh a model's parameters are sharded over (`NamedSharding`), or None (one device)."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    sh = getattr(leaves[0], "sharding", None) if leaves else None
    return sh.mesh if isinstance(sh, jax.sharding.NamedSharding) and sh.mesh.size > 1 else None


def hidden(model, weights, tokens, ctx: AttentionContext):
    """The model's forward in `ctx`: over the stacked layers, or unrolled over a backend's
    decode weights (`backends.cpu.DecodeWeights`) when the Engine made some."""
    if weights is None:
        return model.forward(tokens, ctx)
    return model.forward_unrolled(weights.blocks, tokens, ctx)


def vocab_logits(model, weights, h, platform: str):
    """f32 logits [..., V] of final hidden states h: on a CPU a plain model's [V, D] head (tied,
    or the decode weights' transposed copy) by `backends.cpu.matmul_t`; else `model.logits`."""
    if platform == "cpu" and model.lora is None:
        if model.config.tie_word_embeddings:
            return cpu.matmul_t(h, model.embed[...], model.compute_dtype)
        if weights is not None:
            return cpu.matmul_t(h, weights.head_t, model.compute_dtype)
    return model.logits(h)


def _probe_hidden(graphdef, state, prefix, c: Candidates, suffix, window=None, weights=None,
                  platform=None):
    """The final-normed state f32 [B, D] at the last position of the probe turn against each
    candidate's cache; nothing written. `window` (static): attend only the cache's first
    `window` slots, which hold every slot written (the rest are empty: position -1,
    invisible), as decode does."""
    model = nnx.merge(graphdef, state)
    if window is not None and window < c.cache.max_len:
        c = c._replace(cache=c.cache.window(window))
    B, K = c.tokens.shape[0], suffix.shape[0]
    # rows that ended emitted their eot already: the suffix's leading eot is then invisible
    toks = jnp.broadcast_to(suffix, (B, K))
    base = c.start + c.length
    ar = jnp.arange(K, dtype=jnp.int32)[None]
    pos = jnp.where(c.done[:, None], base[:, None] + ar - 1, base[:, None] + ar)
    pos = pos.at[:, 0].set(jnp.where(c.done, -1, pos[:, 0]))
    h, _ = hidden(model, weights, toks, AttentionContext(pos, prefix.cache, c.cache, write=False,
                                                         last_only=True, platform=platform))
    return h[:, 0]


def _probe_fn(graphdef, state, prefix, c: Candidates, suffix, yes_no, window=None, weights=None,
              platform=None):
    """The probe's score per candidate (`Engine.probe`), from `_probe_hidden`."""
    h = _probe_hidden(graphdef, state, prefix, c, suffix, window, weights, platform)
    return no_share(nnx.merge(graphdef, state), h, yes_no)


@functools.lru_cache(maxsize=8)
def compiled(graphdef, stop_ids: tuple[int, ...], top_k: int, mesh,
             platform: str) -> SimpleNamespace:
    """The jitted pieces for one model structure (`graphdef`) on one mesh, traced for `platform`,
    shared by every Engine of it: a new Engine (e.g. each `generate()` call) or new weights of
    the same shapes compile nothing. The sampling key is an argument (a new seed compiles
    nothing either). Programs of another mesh get their own (and at most 8 sets are kept
    alive)."""
    stops = tuple(stop_ids) or (-2,)

    def prefill(state, tokens, positions, cache, weights):
        # the cache is empty: written, not attended (no [S, T] scores against empty slots)
        model = nnx.merge(graphdef, state)
        h, cache = hidden(model, weights, tokens,
                          AttentionContext(positions, cache=cache, read_cache=False,
                                           last_only=True, platform=platform))
        return vocab_logits(model, weights, h[:, 0], platform), cache

    def first(key, last_logits, length, prompt_id, temp, top_p, cand_offset, n, slots, cfg,
              cache_dtype):
        # the new rows whole, their empty cache included: one dispatch (`Engine.branch`)
        G = last_logits.shape[0]
        B = G * n
        pid = jnp.repeat(prompt_id, n)
        cid = jnp.tile(jnp.arange(n, dtype=jnp.int32), G) + cand_offset
        logits = jnp.repeat(last_logits, n, axis=0)
        tok = sample_tokens(logits, row_keys(key, pid, cid, 0), temp, top_p, top_k, platform)
        return Candidates(init_cache(cfg, B, slots, cache_dtype, mesh),
                          jnp.full((B, slots), -1, jnp.int32), tok, jnp.zeros((B,), jnp.int32),
                          jnp.zeros((B,), bool), temp, top_p, pid, cid, jnp.repeat(length, n),
                          token_logprob(logits, tok), jnp.zeros((B,), jnp.float32))

    def decode(state, prefix, c: Candidates, until, key, weights):
        model = nnx.merge(graphdef, state)
        stop = jnp.asarray(stops, jnp.int32)
        until = jnp.minimum(until, c.tokens.shape[1])

        def cond(c):
            return (c.cache.index < until) & ~jnp.all(c.done)

        def body(c: Candidates):
            t = c.cache.index
            live = ~c.done
            tok = c.next_token
            tokens = jax.lax.dynamic_update_slice(
                c.tokens, jnp.where(live, tok, -1)[:, None], (jnp.zeros((), jnp.int32), t))
            pos = jnp.where(live, c.start + t, -1)[:, None]
            h, cache = hidden(model, weights, tok[:, None],
                              AttentionContext(pos, prefix.cache, c.cache, last_only=True,
                                               platform=platform))
            logits = vocab_logits(model, weights, h[:, 0], platform)
            keys = row_keys(key, c.prompt_id, c.cand_id, t + 1)
            nxt = sample_tokens(logits, keys, c.temperature, c.top_p, top_k, platform)
            done = c.done | (live & jnp.isin(tok, stop))
            return c._replace(cache=cache, tokens=tokens, next_token=nxt,
                              length=c.length + live.astype(jnp.int32), done=done,
                              logprob=c.logprob + jnp.where(live, c.next_logprob, 0.0),
                              next_logprob=token_logprob(logits, nxt))

        # attend to the slots written so far only: the loop runs in phases over windows of the
        # cache (32, 64, 128, ... slots, the last one whole), each on a static slice of it, so
        # a step reads the keys and values of at most twice the tokens emitted, not the whole
        # buffer (slots past the window are empty: position -1, invisible, nothing lost)
        full = c.cache
        for w in windows(full.max_len):
            c = jax.lax.while_loop(lambda c, w=w: cond(c) & (c.cache.index < w), body,
                                   c._replace(cache=full.window(w)))
            full = KVCache(full.k.at[:, :, :w].set(c.cache.k), full.v.at[:, :, :w].set(c.cache.v),
                           full.pos.at[:, :w].set(c.cache.pos), c.cache.index)
        return c._replace(cache=full)

    return SimpleNamespace(prefill=jax.jit(prefill),
                           first=jax.jit(first, static_argnames=("n", "slots", "cfg",
                                                                  "cache_dtype")),
                           decode=jax.jit(decode, donate_argnums=(2,)),
                           probe=jax.jit(functools.partial(_probe_fn, graphdef,
                                                           platform=platform),
                                         static_argnames="window"),
                           probe_hidden=jax.jit(functools.partial(_probe_hidden, graphdef,
                                                                  platform=platform),
                                                static_argnames="window"))


def _probe_turn(cands: Candidates, spec):
    """(the probe turn's tokens int32 [K], the cache window that holds every slot written)."""
    suffix = jnp.asarray((spec.eot,) + tuple(spec.suffix), jnp.int32)
    return suffix, next(w for w in windows(cands.cache.max_len) if w >= cands.step)


class Engine:
    """Holds (graphdef, state) of a model and the jitted pieces. `stop_ids`: end tokens.
    `mesh`: where to sample (default: the mesh the model's parameters are sharded over).
    Cheap to build: the compiled pieces are shared by model structure (`compiled`).
    `platform`: what the programs are traced for (default: JAX's default backend; `plan` names
    "tpu" to compile for TPU devices from a CPU process), chosen here once.
    `per_layer`: on a CPU, decode with the layers as separate arrays (`backends.cpu.
    decode_weights`, a copy of the layer weights; default: on one CPU device, for a model
    without adapter whose layer weights reach `backends.cpu.PER_LAYER_MIN_BYTES`)."""

    def __init__(self, model, *, stop_ids: Sequence[int] = (), seed: int = 0, top_k: int = 0,
                 cache_dtype=None, mesh=None, per_layer: bool | None = None,
                 platform: str | None = None):
        self.mesh = mesh if mesh is not None else model_mesh(model)
        self.platform = platform or jax.default_backend()
        if per_layer is None:
            per_layer = self.platform == "cpu" and cpu.wants_decode_weights(
                layer_bytes(model), model.lora is not None, self.mesh is not None)
        if per_layer and self.platform != "cpu":
            raise JSEError(f"per_layer decode weights are a CPU layout; this Engine traces for "
                           f"{self.platform}: leave per_layer unset")
        self.weights = (cpu.decode_weights(model.stacked_weights(), model.head_t())
                        if per_layer else None)
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.stop_ids = tuple(int(s) for s in stop_ids)
        self.key = jax.random.PRNGKey(seed)
        self.top_k = int(top_k)
        self.cache_dtype = cache_dtype or model.compute_dtype
        self.programs = compiled(self.graphdef, self.stop_ids, self.top_k, self.mesh,
                                 self.platform)

    def _on_mesh(self):
        """Trace and run under the model's mesh (the model then splits activations by batch)."""
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ prefill
    def prefill(self, prompt_ids: Sequence[Sequence[int]], prompt_offset: int = 0) -> Prompts:
        """Left-pad G prompts to a bucketed length and run them once. Returns `Prompts`."""
        G = len(prompt_ids)
        lens = [len(p) for p in prompt_ids]
        if G == 0:
            raise JSEError("no prompts given")
        if min(lens) == 0:
            raise JSEError(f"prompt {lens.index(0)} is empty: give at least one token")
        ctx = self.config.max_position_embeddings
        if max(lens) > ctx:
            raise JSEError(f"prompt of {max(lens)} tokens is longer than the model's context "
                           f"({ctx} tokens): shorten it")
        T = min(bucket(max(lens)), ctx)  # a context that is not a power of two caps the bucket
        toks, pos = left_pad(prompt_ids, T)
        with self._on_mesh():
            cache = init_cache(self.config, G, T, self.cache_dtype, self.mesh)
            logits, cache = self.programs.prefill(self.state, toks, pos, cache, self.weights)
        return Prompts(cache, jnp.asarray(np.asarray(lens, np.int32)), logits,
                       jnp.asarray(np.arange(G, dtype=np.int32) + prompt_offset))

    # ------------------------------------------------------------------ branch
    def branch(self, prompts: Prompts, n: int, max_new_tokens: int, *, temperature=1.0,
               top_p=1.0, cand_offset: int = 0) -> Candidates:
        """N candidate rows per prompt sharing its cache; first tokens sampled from the prompt's
        last logits. `temperature` / `top_p`: scalars or per-candidate arrays [G * n].
        Checks run on host values; the prompt lengths are read back only when the prompt cache's
        bucket alone cannot rule out running past the context."""
        if n < 1:
            raise JSEError(f"n must be >= 1, got {n}")
        if max_new_tokens < 1:
            raise JSEError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        G = prompts.length.shape[0]
        B = G * n
        ctx = self.config.max_position_embeddings
        if (prompts.cache.max_len + max_new_tokens > ctx
                and int(jnp.max(prompts.length)) + max_new_tokens > ctx):
            raise JSEError(f"prompt + max_new_tokens exceeds the model's context "
                           f"({ctx}): lower max_new_tokens")
        temp = np.broadcast_to(np.asarray(temperature, np.float32), (B,))
        tp = np.broadcast_to(np.asarray(top_p, np.float32), (B,))
        if np.any((tp <= 0) | (tp > 1)):
            raise JSEError("top_p must be in (0, 1]")
        if np.any(temp < 0):
            raise JSEError("temperature must be >= 0 (0 = greedy)")
        with self._on_mesh():  # the buffer ends decoding: exactly max_new_tokens per candidate
            return self.programs.first(self.key, prompts.last_logits, prompts.length,
                                       prompts.prompt_id, np.ascontiguousarray(temp),
                                       np.ascontiguousarray(tp), np.int32(cand_offset), n=n,
                                       slots=max_new_tokens, cfg=self.config,
                                       cache_dtype=jnp.dtype(self.cache_dtype))

    # ------------------------------------------------------------------ decode
    def decode(self, prompts: Prompts, cands: Candidates, until: int | None = None) -> Candidates:
        """Decode until every row is done or `until` tokens were emitted (default: buffer end).
        The candidates' cache is donated (updated in place)."""
        until = cands.tokens.shape[1] if until is None else until
        with self._on_mesh():
            return self.programs.decode(self.state, prompts, cands,
                                        jnp.asarray(until, jnp.int32), self.key, self.weights)

    # ------------------------------------------------------------------ probe
    def probe(self, prompts: Prompts, cands: Candidates, spec) -> jax.Array:
        """Self-evaluation score P(No) / (P(Yes) + P(No)) per candidate, f32 [B]. The candidates'
        cache and positions are not touched (nothing is written). The probe attends only the
        cache window (`windows`) that holds the slots written so far: probing after 8 tokens
        reads 32 slots, not the whole max_new_tokens buffer."""
        suffix, window = _probe_turn(cands, spec)
        with self._on_mesh():
            return self.programs.probe(self.state, prompts, cands, suffix,
                                       jnp.asarray([spec.yes, spec.no], jnp.int32),
                                       window=window, weights=self.weights)

    def probe_hidden(self, prompts: Prompts, cands: Candidates, spec) -> jax.Array:
        """The final-normed state at the probe's last position per candidate, f32 [B, D]: what
        `probe` reads the token from (a probe head is fitted to it, `selfeval.probe_fit`).
        Nothing is written, as in `probe`."""
        suffix, window = _probe_turn(cands, spec)
        with self._on_mesh():
            return self.programs.probe_hidden(self.state, prompts, cands, suffix, window=window,
                                              weights=self.weights)

    # ------------------------------------------------------------------ select
    @staticmethod
    def top_rows(scores, n: int, keep: int) -> jax.Array:
        """Row indices of the `keep` best-scored of each prompt's n candidates, in row order."""
        G = scores.shape[0] // n
        s = scores.reshape(G, n)
        idx = jnp.sort(jax.lax.top_k(s, keep)[1], axis=-1)
        return (idx + jnp.arange(G)[:, None] * n).reshape(-1)

    @staticmethod
    def select(cands: Candidates, rows) -> Candidates:
        """Keep candidate rows `rows` (their cache rows gathered: later steps run smaller)."""
        rows = jnp.asarray(rows, jnp.int32)
        return Candidates(cands.cache.take(rows), *(x[rows] for x in cands[1:]))

    @staticmethod
    def select_prompts(prompts: Prompts, rows) -> Prompts:
        """Keep prompts `rows` (compaction between rounds)."""
        rows = jnp.asarray(rows, jnp.int32)
        return Prompts(prompts.cache.take(rows), prompts.length[rows], prompts.last_logits[rows],
                       prompts.prompt_id[rows])

    @staticmethod
    def mean_logprob(cands: Candidates) -> np.ndarray:
        """Mean log-probability of each row's emitted tokens under the model, f32 [B] (-inf for
        a row that emitted nothing): the training-free Best-of-N score, free with decoding."""
        from jaxselfeval.sample.likelihood import mean_logprob

        return mean_logprob(np.asarray(cands.logprob), np.asarray(cands.length))

    @staticmethod
    def outputs(cands: Candidates) -> list[list[int]]:
        """Emitted tokens per row (host lists)."""
        toks, lens = np.asarray(cands.tokens), np.asarray(cands.length)
        return [toks[i, :lens[i]].tolist() for i in range(len(lens))]

