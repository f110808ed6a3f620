"""An external reward model: our Llama backbone + a linear head, in the form of HF
`LlamaForSequenceClassification` (ArmoRM / Skywork-style RMs, num_labels=1), for the
Best-of-N-by-RM baseline. Export: `jaxselfeval.selfeval.reward_export` (`save_reward_model`, also
importable from here); training: `jaxselfeval.selfeval.reward_train`.

Matches transformers 5 (`GenericForSequenceClassification.forward`) exactly:
- the backbone runs at positions 0..S-1 of the row (left padding included), pads masked out
  by `attention_mask` as keys; no mask = every token visible (causal only);
- the head reads the hidden state of the RIGHTMOST token whose id != pad_token_id
  (`argmax(arange(S) * (ids != pad))`: works for left and right padding; a row of pads only
  reads position 0); with no pad_token_id a single row reads its last position and a batch of
  several rows is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxselfeval.errors import JSEError
from jaxselfeval.hf_io import _Reader, load_pretrained
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.selfeval.rows import encode_shared, hidden_rows, prompt_batches
from jaxselfeval.selfeval.reward_export import save_reward_model  # noqa: F401 (public here too)
from jaxselfeval.tokenizer import load_tokenizer
from jaxselfeval.train.data import padded_len


def last_token_index(tokens, pad_token_id: int | None):
    """tokens int [B, S] -> int32 [B]: the position transformers' sequence classifier pools."""
    B, S = tokens.shape
    if pad_token_id is None:
        if B != 1:
            raise JSEError(f"a batch of {B} rows needs a pad_token_id to find each row's last "
                           "token: set pad_token_id in config.json (or init_reward_model("
                           "pad_token_id=...))")
        return jnp.full((B,), S - 1, jnp.int32)
    non_pad = (tokens != pad_token_id).astype(jnp.int32)
    return jnp.argmax(jnp.arange(S, dtype=jnp.int32)[None] * non_pad, axis=-1).astype(jnp.int32)


class RewardModel(nnx.Module):
    """backbone: Llama (its LM head unused); head: nnx.Param f32 [D, num_labels].

    `rm(tokens, attention_mask)` -> f32 [B, num_labels]; `rm.score(...)` -> f32 [B] (label 0).
    """

    def __init__(self, backbone, head, *, pad_token_id: int | None = None):
        D = backbone.config.hidden_size
        head = jnp.asarray(head, jnp.float32)
        if head.ndim != 2 or head.shape[0] != D:
            raise JSEError(f"reward head has shape {tuple(head.shape)}, expected [{D}, num_labels]"
                           " for this backbone")
        self.backbone = backbone
        self.head = nnx.Param(head, logical_axes=("embed", None))
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_labels(self) -> int:
        return int(self.head.shape[1])

    def __call__(self, tokens, attention_mask=None):
        """tokens int32 [B, S]; attention_mask [B, S] 1 = real / 0 = pad, or None (all visible).
        Returns f32 [B, num_labels]."""
        tokens = jnp.asarray(tokens)
        B, S = tokens.shape
        last = last_token_index(tokens, self.pad_token_id)
        positions = None  # 0..S-1, all visible: transformers with attention_mask=None
        if attention_mask is not None:
            positions = jnp.where(jnp.asarray(attention_mask) > 0,
                                  jnp.arange(S, dtype=jnp.int32)[None], -1)
        h, _ = self.backbone.forward(tokens, AttentionContext(positions))  # [B, S, D]
        pooled = h[jnp.arange(B), last].astype(jnp.float32)  # [B, D]
        return jnp.einsum("bd,dl->bl", pooled, self.head[...].astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST)

    def score(self, tokens, attention_mask=None):
        """tokens int32 [B, S], attention_mask [B, S] or None -> f32 [B] (the first label)."""
        return self(tokens, attention_mask)[:, 0]

    def score_shared(self, batch: dict):
        """The first label's score f32 [B] of rows in the shared-prompt layout
        (`selfeval.rows.encode_shared` with nothing after the response): each prompt's keys and
        values computed once, the head read at each row's last token (batch["last"]). Equal to
        `score` on the whole right-padded rows."""
        h = hidden_rows(self.backbone, batch)  # [B, W, D]
        pooled = h[jnp.arange(h.shape[0]), batch["last"]].astype(jnp.float32)
        return jnp.einsum("bd,d->b", pooled, self.head[...][:, 0].astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST)


def score_sequences(rm: "RewardModel", seqs, *, batch: int = 64) -> np.ndarray:
    """Reward of each token sequence (prompt + response ids), right-padded with the RM's pad
    token in batches of `batch` rows (one compile per padded length). f32 [len(seqs)]."""
    pad = rm.pad_token_id
    if pad is None:
        raise JSEError("the reward model has no pad_token_id: set pad_token_id in its config.json "
                       "so each row's last token can be found")
    if not seqs:
        return np.zeros(0, np.float32)
    T = padded_len(max(len(q) for q in seqs))
    f = jax.jit(lambda t, m: rm.score(t, m))
    out = []
    for s in range(0, len(seqs), batch):
        chunk = seqs[s:s + batch]
        toks = np.full((batch, T), pad, np.int32)
        mask = np.zeros((batch, T), np.int32)
        for i, q in enumerate(chunk):
            toks[i, :len(q)], mask[i, :len(q)] = q, 1
        mask[len(chunk):, 0] = 1  # filler rows: one visible token
        out.append(np.asarray(f(toks, mask))[:len(chunk)])
    return np.concatenate(out).astype(np.float32)


def pooled_at(d: dict, pad_token_id: int | None) -> dict:
    """Set d["last"] (shared-prompt layout) to where transformers' sequence classifier reads
    each row: its rightmost token that is not the pad token (ChatML pads with <|im_end|>, the
    token that ends a response), within the row's continuation."""
    if pad_token_id is not None:
        real = (d["positions"] >= 0) & (d["tokens"] != pad_token_id)
        W = real.shape[1]
        d["last"] = np.where(real.any(1), W - 1 - np.argmax(real[:, ::-1], 1), 0).astype(np.int32)
    return d


def score_responses(rm: "RewardModel", prompts, responses, *, rows: int = 64) -> np.ndarray:
    """Reward of each response to its prompt: prompts [G] token lists, responses [G][n] token
    lists (n a prompt). Each prompt's keys and values are computed once for its n responses
    (`RewardModel.score_shared`), rows // n prompts a batch (`rows.prompt_batches`: one shape).
    Equal to `score_sequences` of the whole sequences. f32 [G, n]."""
    G, n = len(prompts), len(responses[0]) if responses else 0
    if G == 0 or n == 0:
        return np.zeros((G, n), np.float32)
    rows_ = [{"example": g, "prompt_ids": list(prompts[g]), "response_ids": list(r),
              "truncation": 0} for g in range(G) for r in responses[g]]
    d = pooled_at(encode_shared(rows_, lambda r: [], seq_len=1 << 30, fields=()),
                  rm.pad_token_id)
    f = jax.jit(lambda b: rm.score_shared(b))
    out = np.zeros(G * n, np.float32)
    for idx, b in prompt_batches(d, rows):  # every prompt has its n rows: no filler rows
        s = np.asarray(f(b))
        out[idx[idx >= 0]] = s[idx >= 0]
    return out.reshape(G, n)


def init_reward_model(backbone, seed: int = 0, *, num_labels: int = 1,
                      pad_token_id: int | None = None) -> RewardModel:
    """A fresh head (normal(0, 0.02), as transformers initialises `score`) on `backbone`.
    pad_token_id defaults to the backbone config's."""
    D = backbone.config.hidden_size
    head = 0.02 * jax.random.normal(jax.random.key(seed), (D, num_labels), jnp.float32)
    if pad_token_id is None:
        pad_token_id = backbone.config.pad_token_id
    return RewardModel(backbone, head, pad_token_id=pad_token_id)


def load_reward_model(path, dtype="float32", *, mesh=None) -> RewardModel:
    """An HF LlamaForSequenceClassification directory (`model.*` + `score.weight`
    [num_labels, D]) -> RewardModel. Backbone weights in `dtype`; the head stays f32."""
    path = Path(path)
    backbone = load_pretrained(path, dtype, mesh=mesh, lm_head=False)
    reader = _Reader(path)
    if not reader.has("score.weight"):
        raise JSEError(f"'{path}' has no score.weight: not a sequence-classification reward "
                       "model (LlamaForSequenceClassification with num_labels=1)")
    sl = reader.slice("score.weight")
    shape = tuple(sl.get_shape())
    D = backbone.config.hidden_size
    if len(shape) != 2 or shape[1] != D:
        raise JSEError(f"score.weight in '{path}' has shape {shape}, expected [num_labels, {D}]")
    w = np.asarray(sl[:]).astype(np.float32)  # [num_labels, D]
    cfg = json.loads((path / "config.json").read_text())
    pad = cfg.get("pad_token_id", (cfg.get("text_config") or {}).get("pad_token_id"))
    rm = RewardModel(backbone, w.T, pad_token_id=pad)
    rm.source_dir = str(path)
    return rm


def check_rm_tokenizer(path, tokenizer) -> None:
    """The reward model scores the policy's token ids, so it must read them as the policy's
    tokenizer wrote them: every token of the policy's vocabulary at the same id in the reward
    model's tokenizer (extra tokens such as an added pad are fine), or, for a directory without
    tokenizer files, an embedding table covering the policy's ids. One-line error otherwise (and
    for a directory that is not an HF one)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise JSEError(f"reward model '{path}' is not an HF directory (no config.json)")
    cfg = json.loads((path / "config.json").read_text())
    vocab = tokenizer.get_vocab()
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        theirs = load_tokenizer(path).get_vocab()
        bad = [t for t, i in vocab.items() if theirs.get(t) != i]
        if bad:
            raise JSEError(f"reward model '{path}' tokenizes differently from the policy ({len(bad)} "
                           f"of its {len(vocab)} tokens differ, e.g. {bad[0]!r}): use a reward "
                           f"model built on the policy's tokenizer (it scores the policy's ids)")
    elif int(cfg.get("vocab_size", 0)) < max(vocab.values()) + 1:
        raise JSEError(f"reward model '{path}' has {cfg.get('vocab_size')} embeddings but the "
                       f"policy's tokenizer has ids up to {max(vocab.values())}: use a reward model "
                       f"built on the policy's tokenizer")
