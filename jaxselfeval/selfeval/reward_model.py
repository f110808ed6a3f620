"""An external reward model: our Llama backbone + a scalar head, in the form of HF
`LlamaForSequenceClassification` (ArmoRM / Skywork-style RMs), for the Best-of-N baseline.

Pooling matches transformers: the head reads the hidden state of the rightmost token that is
not `pad_token_id` (works for left and right padding).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxselfeval.errors import JSEError


class RewardModel(nnx.Module):
    """backbone: Llama; head: [D, num_labels]. `score(tokens)` -> f32 [B] (label 0)."""

    def __init__(self, backbone, *, num_labels: int = 1, pad_token_id: int | None = None,
                 rngs: nnx.Rngs | None = None):
        self.backbone = backbone
        D = backbone.config.hidden_size
        init = (0.02 * jax.random.normal((rngs or nnx.Rngs(0)).params(), (D, num_labels))
                if rngs is not None else jnp.zeros((D, num_labels)))
        self.head = nnx.Param(init.astype(jnp.float32), logical_axes=("embed", None))
        self.pad_token_id = pad_token_id

    @property
    def config(self):
        return self.backbone.config

    def __call__(self, tokens, attention_mask=None):
        """tokens int32 [B, S] -> rewards f32 [B, num_labels]."""
        B, S = tokens.shape
        if attention_mask is None:
            if self.pad_token_id is None and B != 1:
                raise JSEError("a batch needs pad_token_id (set it in config.json) to find each "
                               "row's last token")
            attention_mask = (tokens != (-1 if self.pad_token_id is None else self.pad_token_id))
        m = attention_mask.astype(jnp.int32)
        pos = jnp.where(m > 0, jnp.cumsum(m, axis=-1) - 1, -1)
        h, _ = self.backbone.forward(tokens, pos, return_hidden=True)
        last = jnp.argmax(jnp.arange(S)[None] * m, axis=-1)
        pooled = h[jnp.arange(B), last]
        return jnp.einsum("bd,dl->bl", pooled, self.head[...].astype(jnp.float32))

    def score(self, tokens, attention_mask=None):
        return self(tokens, attention_mask)[:, 0]


def load_reward_model(path, dtype="float32") -> RewardModel:
    """An HF LlamaForSequenceClassification directory -> RewardModel."""
    from jaxselfeval.hf_io import _Reader, load_pretrained

    path = Path(path)
    backbone = load_pretrained(path, dtype, lm_head=False)
    reader = _Reader(path)
    if not reader.has("score.weight"):
        raise JSEError(f"'{path}' has no score.weight: not a sequence-classification (reward) model")
    w = np.asarray(reader.slice("score.weight")[:], np.float32)  # [num_labels, D]
    cfg = json.loads((path / "config.json").read_text())
    rm = RewardModel(backbone, num_labels=w.shape[0], pad_token_id=cfg.get("pad_token_id"))
    rm.head[...] = jnp.asarray(w.T)
    return rm


def save_reward_model(rm: RewardModel, out_dir, *, tokenizer_dir=None) -> Path:
    """Write an HF directory that `LlamaForSequenceClassification.from_pretrained` loads."""
    from jaxselfeval.hf_io import save_pretrained

    out = save_pretrained(rm.backbone, out_dir, tokenizer_dir=tokenizer_dir)
    files = sorted(out.glob("model*.safetensors"))
    if len(files) != 1:
        raise JSEError("reward-model export expects a single safetensors file; raise max_shard_bytes")
    from safetensors.numpy import load_file

    tensors = load_file(files[0])
    tensors.pop("lm_head.weight", None)
    tensors["score.weight"] = np.ascontiguousarray(np.asarray(rm.head[...], np.float32).T)
    save_file(tensors, str(files[0]), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(architectures=["LlamaForSequenceClassification"], num_labels=int(rm.head.shape[1]),
               pad_token_id=rm.pad_token_id)
    if rm.head.shape[1] == 1:
        cfg["id2label"], cfg["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def init_reward_model(backbone, *, seed: int = 0, pad_token_id=None) -> RewardModel:
    """A fresh scalar head on `backbone` (the external-RM baseline, trained on the same rewards)."""
    return RewardModel(backbone, pad_token_id=pad_token_id, rngs=nnx.Rngs(seed))


def rm_loss(model, batch):
    """Binary cross-entropy of the scalar score against the 0/1 (or [0, 1]) reward.

    batch: tokens int32 [B, S] (right-padded), mask [B, S] (1 = real token), reward f32 [B]."""
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
    from jaxselfeval.train.data import Batches

    tok = load_tokenizer(model_dir)
    rows = [r for r in load_rows(data_dir, "train") if int(r["truncation"]) == 0]
    pad = tok.pad_token_id
    toks, mask, rew = [], [], []
    for r in rows:
        ids = list(r["prompt_ids"]) + list(r["response_ids"])
        if len(ids) > seq_len:
            continue
        toks.append(ids + [pad] * (seq_len - len(ids)))
        mask.append([1] * len(ids) + [0] * (seq_len - len(ids)))
        rew.append(float(r["reward"]))
    rm = init_reward_model(jse.load_pretrained(model_dir, lm_head=False), seed=seed, pad_token_id=pad)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10, seed=seed,
                      compute_dtype="float32", checkpoint_every=steps, weight_decay=0.0)
    rm, _ = run_training(rm, Batches(np.asarray(toks, np.int32), np.asarray(mask, np.int32),
                                     batch_size, seed, reward=np.asarray(rew, np.float32)),
                         rm_loss, cfg, out_dir=out_dir, progress=progress)
    return save_reward_model(rm, Path(out_dir) / "hf", tokenizer_dir=model_dir)
