"""Train the external-RM baseline: a scalar head (+ backbone) on the capability dataset's full
responses and their verifier rewards, exported as an HF sequence-classification directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optax

from jaxselfeval.errors import JSEError
from jaxselfeval.hf_io import load_pretrained
from jaxselfeval.selfeval.dataset import load_rows
from jaxselfeval.selfeval.reward_export import save_reward_model
from jaxselfeval.selfeval.reward_model import init_reward_model, pooled_at
from jaxselfeval.selfeval.rows import SharedPromptBatches, encode_shared
from jaxselfeval.sharding import make_mesh
from jaxselfeval.tokenizer import load_tokenizer
from jaxselfeval.train import TrainConfig, run_training
from jaxselfeval.train.data import Batches, padded_len


def rm_loss(model, batch):
    """Binary cross-entropy of the scalar score against the 0/1 (or [0, 1]) reward.

    batch: either flat rows (tokens int32 [B, S] right-padded with pad_token_id, mask [B, S]
    1 = real token) or the shared-prompt layout (`selfeval.rows.encode_shared`, "last" where the
    head reads: `reward_model.pooled_at`); reward f32 [B]."""
    if "prompt" in batch:
        s = model.score_shared(batch)
    else:
        s = model.score(batch["tokens"], batch["mask"])
    loss = optax.sigmoid_binary_cross_entropy(s, batch["reward"]).mean()
    return loss, {"loss": loss}


def train_reward_model(data_dir, model_dir, out_dir, *, steps=150, batch_size=32, lr=1e-3,
                       seq_len=160, seed=0, rows_per_prompt=4, progress=True) -> Path:
    """The external-RM baseline: a scalar head (+ backbone) trained on the capability dataset's
    full responses and their verifier rewards. Exports an HF sequence-classification directory.
    rows_per_prompt > 0: batches of batch_size / rows_per_prompt prompts, each prompt's keys and
    values computed once for its rows (`selfeval.rows`; the same loss); 0: whole rows."""
    tok = load_tokenizer(model_dir)
    rows = [r for r in load_rows(data_dir, "train") if int(r["truncation"]) == 0]
    pad = tok.pad_token_id
    if pad is None:
        raise JSEError(f"tokenizer in '{model_dir}' has no pad token: the reward model needs one "
                       "to find each row's last token")
    if rows_per_prompt:
        d = pooled_at(encode_shared(rows, lambda r: [], seq_len, fields=("reward",)), pad)
        batches = SharedPromptBatches(d, batch_size, rows_per_prompt, seed)
    else:
        batches = _flat_batches(rows, pad, seq_len, batch_size, seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10, seed=seed,
                      compute_dtype="float32", checkpoint_every=steps, weight_decay=0.0)
    if rows_per_prompt:
        batches.check_mesh(make_mesh(cfg.mesh))  # the mesh run_training trains on
    rm = init_reward_model(load_pretrained(model_dir, lm_head=False), seed=seed,
                           pad_token_id=pad)
    rm, _ = run_training(rm, batches, rm_loss, cfg, out_dir=out_dir, progress=progress)
    return save_reward_model(rm, Path(out_dir) / "hf", tokenizer_dir=model_dir)


def _flat_batches(rows, pad: int, seq_len: int, batch_size: int, seed: int) -> Batches:
    """Whole rows (prompt + response) right-padded with the pad token."""
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
    return Batches(np.asarray(toks, np.int32), np.asarray(mask, np.int32), batch_size, seed,
                   reward=np.asarray(rew, np.float32))
