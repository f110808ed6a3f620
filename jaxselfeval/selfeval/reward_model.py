"""An external reward model: our Llama backbone + a linear head, in the form of HF
`LlamaForSequenceClassification` (ArmoRM / Skywork-style RMs, num_labels=1), for the
Best-of-N-by-RM baseline.

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
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxselfeval.errors import JSEError


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
        h, _ = self.backbone.forward(tokens, positions, return_hidden=True)  # [B, S, D]
        pooled = h[jnp.arange(B), last].astype(jnp.float32)  # [B, D]
        return jnp.einsum("bd,dl->bl", pooled, self.head[...].astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST)

    def score(self, tokens, attention_mask=None):
        """tokens int32 [B, S], attention_mask [B, S] or None -> f32 [B] (the first label)."""
        return self(tokens, attention_mask)[:, 0]


def score_sequences(rm: "RewardModel", seqs, *, batch: int = 64) -> np.ndarray:
    """Reward of each token sequence (prompt + response ids), right-padded with the RM's pad
    token in batches of `batch` rows (one compile per padded length). f32 [len(seqs)]."""
    pad = rm.pad_token_id
    if pad is None:
        raise JSEError("the reward model has no pad_token_id: set pad_token_id in its config.json "
                       "so each row's last token can be found")
    if not seqs:
        return np.zeros(0, np.float32)
    from jaxselfeval.train.data import padded_len

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
    from jaxselfeval.hf_io import _Reader, load_pretrained

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
        from jaxselfeval.tokenizer import load_tokenizer

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


class _WithoutLMHead:
    """The backbone as `save_pretrained` sees it: tied embeddings, so no lm_head is written."""

    def __init__(self, model):
        self._model = model
        self.config = model.config.replace(tie_word_embeddings=True)

    def __getattr__(self, name):
        return getattr(self._model, name)


def save_reward_model(rm: RewardModel, out_dir, *, dtype=None, tokenizer_dir=None,
                      max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Write an HF directory that `LlamaForSequenceClassification.from_pretrained` loads.

    The backbone is written by `save_pretrained` (one tensor on the host at a time, shards);
    `score.weight` [num_labels, D] goes in one more small shard listed in the index. The
    directory appears whole or not at all; only process 0 writes.
    """
    from safetensors.numpy import save_file

    from jaxselfeval.hf_io import _to_host, save_pretrained
    from jaxselfeval.model.llama import as_dtype

    out = Path(out_dir)
    dt = np.dtype(as_dtype(dtype) if dtype is not None else rm.backbone.param_dtype)
    head = _to_host(rm.head[...]).astype(np.float32)  # collective on multi-host: every process
    writer = jax.process_index() == 0
    if writer:
        out.parent.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix=".tmp-rm-", dir=out.parent))
    else:
        base = out.parent / ".tmp-rm-unused"
    src = tokenizer_dir or getattr(rm, "source_dir", None) or getattr(rm.backbone, "source_dir",
                                                                         None)
    try:
        backbone = rm.backbone
        if getattr(backbone, "lora", None) is not None:  # adapters are exported merged into W
            from jaxselfeval.lora import merge_lora

            backbone = merge_lora(backbone)
        d = save_pretrained(_WithoutLMHead(backbone), base / "rm", dtype=dtype,
                            max_shard_bytes=max_shard_bytes, tokenizer_dir=src)
        if not writer:
            return out
        (d / "selfeval.json").unlink(missing_ok=True)  # not a capability-token model
        idx = d / "model.safetensors.index.json"
        if idx.exists():
            index = json.loads(idx.read_text())
            wm, total = index["weight_map"], index.get("metadata", {}).get("total_size", 0)
        else:
            header = _header(d / "model.safetensors")
            wm = {k: "model.safetensors" for k in header}
            total = sum(int(np.prod(v["shape"])) * _ITEMSIZE[v["dtype"]] for v in header.values())
        files = sorted(set(wm.values()))
        k = len(files) + 1
        rename = {f: f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i, f in enumerate(files)}
        for f, g in rename.items():
            os.rename(d / f, d / g)
        score_file = f"model-{k:05d}-of-{k:05d}.safetensors"
        score = np.ascontiguousarray(head.T).astype(dt)  # [num_labels, D]
        save_file({"score.weight": score}, str(d / score_file), metadata={"format": "pt"})
        wm = {n: rename[f] for n, f in wm.items()} | {"score.weight": score_file}
        idx.write_text(json.dumps({"metadata": {"total_size": int(total) + score.nbytes},
                                   "weight_map": wm}, indent=2))
        cfg = json.loads((d / "config.json").read_text())
        L = rm.num_labels
        cfg.update(architectures=["LlamaForSequenceClassification"], pad_token_id=rm.pad_token_id,
                   id2label={str(i): f"LABEL_{i}" for i in range(L)},
                   label2id={f"LABEL_{i}": i for i in range(L)})
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(d, out)
        return out
    finally:
        if writer:
            shutil.rmtree(base, ignore_errors=True)


_ITEMSIZE = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}


def _header(file) -> dict:
    """name -> {"dtype", "shape", ...} of a safetensors file, read from its header only."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def rm_loss(model, batch):
    """Binary cross-entropy of the scalar score against the 0/1 (or [0, 1]) reward.

    batch: tokens int32 [B, S] (right-padded with pad_token_id), mask [B, S] (1 = real token),
    reward f32 [B]."""
    import optax

    s = model.score(batch["tokens"], batch["mask"])
    loss = optax.sigmoid_binary_cross_entropy(s, batch["reward"]).mean()
    return loss, {"loss": loss}


def train_reward_model(data_dir, model_dir, out_dir, *, steps=150, batch_size=32, lr=1e-3,
                       seq_len=160, seed=0, progress=True) -> Path:
    """The external-RM baseline: a scalar head (+ backbone) trained on the capability dataset's
    full responses and their verifier rewards. Exports an HF sequence-classification directory."""
    import jaxselfeval as jse
    from jaxselfeval.selfeval.dataset import load_rows
    from jaxselfeval.tokenizer import load_tokenizer
    from jaxselfeval.train import TrainConfig, run_training
    from jaxselfeval.train.data import Batches, padded_len

    tok = load_tokenizer(model_dir)
    rows = [r for r in load_rows(data_dir, "train") if int(r["truncation"]) == 0]
    pad = tok.pad_token_id
    if pad is None:
        raise JSEError(f"tokenizer in '{model_dir}' has no pad token: the reward model needs one "
                       "to find each row's last token")
    toks, mask, rew = [], [], []
    longest = max((len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows), default=1)
    seq_len = min(seq_len, padded_len(longest))  # no padding columns nobody uses
    for r in rows:
        ids = list(r["prompt_ids"]) + list(r["response_ids"])
        if len(ids) > seq_len:
            continue
        toks.append(ids + [pad] * (seq_len - len(ids)))
        mask.append([1] * len(ids) + [0] * (seq_len - len(ids)))
        rew.append(float(r["reward"]))
    rm = init_reward_model(jse.load_pretrained(model_dir, lm_head=False), seed=seed,
                           pad_token_id=pad)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10, seed=seed,
                      compute_dtype="float32", checkpoint_every=steps, weight_decay=0.0)
    rm, _ = run_training(rm, Batches(np.asarray(toks, np.int32), np.asarray(mask, np.int32),
                                     batch_size, seed, reward=np.asarray(rew, np.float32)),
                         rm_loss, cfg, out_dir=out_dir, progress=progress)
    return save_reward_model(rm, Path(out_dir) / "hf", tokenizer_dir=model_dir)
