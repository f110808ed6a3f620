"""Tokenised training batches with loss masks; order is a pure function of (seed, step)."""

from __future__ import annotations

import jax
import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.tokenizer import encode_chat


def encode_sft(tok, task, examples, seq_len: int):
    """Prompt (chat template) + solution + <|eot_id|>, right-padded.

    Returns tokens int32 [N, seq_len], loss_mask f32 [N, seq_len] (1 where the *next* token is
    part of the answer, i.e. mask aligned with targets tokens[:, 1:]), and the count dropped
    for being longer than seq_len.
    """
    toks, masks, dropped = [], [], 0
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    pad = tok.pad_token_id or 0
    for ex in examples:
        p = encode_chat(tok, task.messages(ex))
        a = tok.encode(ex.solution, add_special_tokens=False) + [eot]
        ids = p + a
        if len(ids) > seq_len:
            dropped += 1
            continue
        m = [0.0] * (len(p) - 1) + [1.0] * len(a)  # predicts a[0..] from positions p-1..
        toks.append(ids + [pad] * (seq_len - len(ids)))
        masks.append(m + [0.0] * (seq_len - len(m)))
    if not toks:
        raise JSEError(f"every example is longer than seq_len={seq_len}: raise seq_len")
    return np.asarray(toks, np.int32), np.asarray(masks, np.float32), dropped


class Batches:
    """Epoch-shuffled batches: `batch(step)` depends only on (seed, step).

    Each process gets its contiguous slice of the global batch (multi-host: each host reads
    only its part).
    """

    def __init__(self, tokens, mask, batch_size: int, seed: int, **extra):
        """tokens/mask (and any `extra` arrays) share their leading [N] axis."""
        if len(tokens) < batch_size:
            raise JSEError(f"only {len(tokens)} examples for batch_size {batch_size}")
        self.arrays = {"tokens": tokens, "mask": mask, **extra}
        self.tokens, self.mask, self.bs, self.seed = tokens, mask, batch_size, seed
        self.per_epoch = len(tokens) // batch_size

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))
        return perm[i * self.bs:(i + 1) * self.bs]

    def batch(self, step: int) -> dict:
        idx = self.indices(step)
        n, k = jax.process_count(), jax.process_index()
        idx = np.array_split(idx, n)[k]
        return {k: v[idx] for k, v in self.arrays.items()}
