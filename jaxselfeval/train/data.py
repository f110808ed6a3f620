"""Tokenised training batches with loss masks; order is a pure function of (seed, step).

    tokens, mask, dropped = encode_sft(tok, task, task.examples("train"), seq_len=104)
    batches = Batches(tokens, mask, batch_size=32, seed=0)
    batches.batch(step)   # {"tokens": int32 [B/P, S], "mask": f32 [B/P, S]}: this process's rows

The data position is the optimizer step: a checkpoint at step k resumes with `batch(k)`.
`Batches.describe()` (seed, sizes, a content fingerprint) is stored in every checkpoint so a
resume on other data is refused instead of silently diverging.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.tokenizer import assistant_turn_close, encode_chat


def padded_len(n: int, multiple: int = 16) -> int:
    """n rounded up to a multiple of `multiple` (the padded width of a batch whose longest row
    has n tokens: few distinct shapes to compile, few padding columns)."""
    return -(-int(n) // multiple) * multiple


def encode_sft(tok, task, examples, seq_len: int):
    """Prompt (chat template, generation prompt) + solution + the turn's stop token (Llama 3:
    <|eot_id|>; ChatML: <|im_end|>), right-padded.

    Returns tokens int32 [N, seq_len], loss_mask f32 [N, seq_len] (1 at position t when
    tokens[t + 1] is an answer token: the mask is aligned with the inputs, targets are
    tokens[:, 1:]), and the count dropped for being longer than seq_len.
    """
    docs = [(task.messages(ex), [(ex.solution, True)]) for ex in examples]
    return encode_segments(tok, docs, seq_len, train_eot=True, what="example")


def encode_segments(tok, docs, seq_len: int, *, train_eot: bool = False, what: str = "document"):
    """Like encode_sft for documents whose response is [(text, trained)] segments (each
    tokenised on its own, then the template's stop token, trained when train_eot): the loss mask is 1 only
    where the next token belongs to a trained segment. docs: [(messages, segments)]. Same
    returns as encode_sft."""
    toks, masks, dropped = [], [], 0
    eot = assistant_turn_close(tok)[0]  # where generation stops (read off the chat template)
    pad = tok.pad_token_id or 0
    for messages, segments in docs:
        ids = encode_chat(tok, messages)
        m = [0.0] * (len(ids) - 1)  # position t predicts ids[t + 1]
        for text, trained in segments:
            part = tok.encode(text, add_special_tokens=False)
            ids += part
            m += [float(trained)] * len(part)
        ids.append(eot)
        m.append(float(train_eot))
        if len(ids) > seq_len:
            dropped += 1
            continue
        toks.append(ids + [pad] * (seq_len - len(ids)))
        masks.append(m + [0.0] * (seq_len - len(m)))
    if not toks:
        raise JSEError(f"every {what} is longer than seq_len={seq_len}: raise seq_len")
    return np.asarray(toks, np.int32), np.asarray(masks, np.float32), dropped


class Batches:
    """Epoch-shuffled fixed-size batches: `batch(step)` depends only on (seed, step).

    Each process takes its contiguous share of the global batch (`jax.process_index()` of
    `jax.process_count()`), so on a pod every host reads only its rows.
    """

    def __init__(self, tokens, mask, batch_size: int, seed: int, **extra):
        """tokens/mask (and any `extra` arrays) share their leading [N] axis."""
        if len(tokens) < batch_size:
            raise JSEError(f"only {len(tokens)} examples for batch_size {batch_size}: lower "
                           "batch_size or add data")
        for k, v in {"mask": mask, **extra}.items():
            if len(v) != len(tokens):
                raise JSEError(f"'{k}' has {len(v)} rows but tokens has {len(tokens)}")
        self.arrays = {"tokens": tokens, "mask": mask, **extra}
        self.tokens, self.mask, self.bs, self.seed = tokens, mask, batch_size, seed
        self.per_epoch = len(tokens) // batch_size
        self._fingerprint = None

    def indices(self, step: int) -> np.ndarray:
        """Global row indices [batch_size] of optimizer step `step` (0-based)."""
        epoch, i = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))
        return perm[i * self.bs:(i + 1) * self.bs]

    def batch(self, step: int) -> dict:
        """This process's rows of step `step`: {name: array [batch_size / processes, ...]}."""
        n, k = jax.process_count(), jax.process_index()
        if self.bs % n:
            raise JSEError(f"batch_size {self.bs} is not divisible by the {n} processes")
        idx = np.array_split(self.indices(step), n)[k]
        return {name: v[idx] for name, v in self.arrays.items()}

    def describe(self) -> dict:
        """What the data order depends on, stored with each checkpoint."""
        if self._fingerprint is None:
            crc = 0
            for name in sorted(self.arrays):
                crc = zlib.crc32(np.ascontiguousarray(self.arrays[name]).tobytes(), crc)
            self._fingerprint = f"{crc:08x}"
        return {"seed": int(self.seed), "examples": int(len(self.tokens)),
                "batch_size": int(self.bs), "fingerprint": self._fingerprint}
