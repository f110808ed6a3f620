"""Capability rows as training arrays. A row is prompt + response (or its prefix) + the probe
turn; the probe position is its last token. Two layouts of the same rows:

- flat (`encode_rows`): every row whole, right-padded: tokens [N, S].
- shared prompts (`encode_shared` + `SharedPromptBatches`): each prompt once, and each row's
  continuation after it: the prompt's last token, the response, the probe turn. A batch holds
  G prompts x R of their rows; the model computes a prompt's keys and values once and attends
  its R rows to them (`forward_rows`: `Llama.forward(prefix=...)`), so the loss is the flat
  layout's on about half the tokens (a prompt is about half a row, and ~20 rows share it).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.model.cache import init_cache
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.train.data import padded_len


def encode_rows(rows, spec, seq_len: int):
    """tokens int32 [N, S] right-padded; last int32 [N] probe position; target f32 [N];
    mask f32 [N, S] LM mask on full responses' tokens (aligned with next-token targets).
    Rows longer than seq_len are left out (`keep`: the indices kept); S is the longest row
    rounded up to a multiple of 16 (at most seq_len)."""
    N = len(rows)
    toks = np.zeros((N, seq_len), np.int32)
    mask = np.zeros((N, seq_len), np.float32)
    last = np.zeros(N, np.int32)
    keep = []
    for i, r in enumerate(rows):
        p, resp = list(r["prompt_ids"]), list(r["response_ids"])
        seq = p + resp + spec.after(resp)
        if len(seq) > seq_len:
            continue
        keep.append(i)
        j = len(keep) - 1
        toks[j, :len(seq)] = seq
        last[j] = len(seq) - 1
        if int(r["truncation"]) == 0:
            mask[j, len(p) - 1:len(p) + len(resp) - 1] = 1.0
    n = len(keep)
    tgt = np.asarray([rows[i]["target"] for i in keep], np.float32)
    width = min(seq_len, padded_len(int(last[:n].max(initial=0)) + 1))  # trim unused padding
    return toks[:n, :width], mask[:n, :width], last[:n], tgt, keep


PROMPT_KEYS = ("prompt", "prompt_pos")  # per prompt; "group" and "keep" are bookkeeping
_META = ("group", "keep")


def encode_shared(rows, after, seq_len: int, fields=("target",)) -> dict:
    """The shared-prompt layout of `rows` (rows of one prompt share r["example"] and prompt_ids).
    after(response_ids) -> the tokens that follow a response (the probe turn: `spec.after`; none
    for a reward model); fields: the rows' float values carried along ([N] f32 each).

    Returns {"prompt": int32 [E, P] each prompt but its last token, right-padded;
    "prompt_pos": int32 [E, P] (-1 = padding); "tokens": int32 [N, W] each row's continuation
    (the prompt's last token, the response, `after`); "positions": int32 [N, W] (its positions
    in the whole row, -1 = padding); "last": int32 [N] its last token's index in "tokens" (the
    probe position); "mask": f32 [N, W] the LM mask on full responses (position j predicts
    tokens[j + 1]); each field f32 [N]; "group": int32 [N] the row's prompt; "keep": the row
    indices kept}. Rows longer than seq_len in all are left out, as in `encode_rows`."""
    index, prompts, conts, meta = {}, [], [], []
    for i, r in enumerate(rows):
        p, resp = list(r["prompt_ids"]), list(r["response_ids"])
        cont = p[-1:] + resp + list(after(resp))
        if len(p) - 1 + len(cont) > seq_len:
            continue
        key = str(r["example"])
        if key not in index:
            index[key] = len(prompts)
            prompts.append(p)
        elif prompts[index[key]] != p:
            raise JSEError(f"rows of example '{key}' have different prompts: the capability data "
                           "is inconsistent; rebuild it with `jaxselfeval data build`")
        conts.append(cont)
        meta.append((i, index[key], len(p) - 1, len(resp) if int(r["truncation"]) == 0 else 0))
    if not conts:
        raise JSEError(f"every capability row is longer than seq_len={seq_len}: raise seq_len")
    E, N = len(prompts), len(conts)
    P = padded_len(max(len(p) - 1 for p in prompts) or 1)
    W = padded_len(max(len(c) for c in conts))
    out = {"prompt": np.zeros((E, P), np.int32), "prompt_pos": np.full((E, P), -1, np.int32),
           "tokens": np.zeros((N, W), np.int32), "positions": np.full((N, W), -1, np.int32),
           "last": np.zeros(N, np.int32), "mask": np.zeros((N, W), np.float32),
           **{f: np.asarray([rows[m[0]][f] for m in meta], np.float32) for f in fields},
           "group": np.asarray([m[1] for m in meta], np.int32),
           "keep": np.asarray([m[0] for m in meta], np.int64)}
    for e, p in enumerate(prompts):
        out["prompt"][e, :len(p) - 1] = p[:-1]
        out["prompt_pos"][e, :len(p) - 1] = np.arange(len(p) - 1)
    for j, (c, (_, _, start, n_lm)) in enumerate(zip(conts, meta)):
        out["tokens"][j, :len(c)] = c
        out["positions"][j, :len(c)] = start + np.arange(len(c))
        out["last"][j] = len(c) - 1
        out["mask"][j, :n_lm] = 1.0
    return out


def members(d: dict) -> list[np.ndarray]:
    """Each prompt's row indices (ascending) of a shared-prompt layout: [E] int arrays."""
    E = len(d["prompt"])
    order = np.argsort(d["group"], kind="stable")
    bounds = np.searchsorted(d["group"][order], np.arange(E + 1))
    return [order[bounds[e]:bounds[e + 1]] for e in range(E)]


class SharedPromptBatches:
    """Batches of `encode_shared` arrays: G prompts x R of their rows, a pure function of
    (seed, step) like `train.data.Batches`. Each epoch visits every prompt once (shuffled); a
    prompt's R rows are drawn without replacement (with, if it has fewer). On several processes
    each takes its contiguous share of the G prompts and their rows."""

    def __init__(self, data: dict, batch_size: int, rows_per_prompt: int, seed: int):
        R = int(rows_per_prompt)
        if R < 1 or batch_size % R:
            raise JSEError(f"rows_per_prompt {R} must be >= 1 and divide batch_size {batch_size}")
        self.data, self.R, self.G, self.bs, self.seed = data, R, batch_size // R, batch_size, seed
        E = len(data["prompt"])
        if E < self.G:
            raise JSEError(f"only {E} prompts for {self.G} a batch (batch_size {batch_size} / "
                           f"rows_per_prompt {R}): lower batch_size or raise rows_per_prompt")
        self.members = members(data)
        self.per_epoch = E // self.G
        self._fingerprint = None

    def check_mesh(self, mesh):
        """The G prompts of a batch must split evenly over the mesh's data axes."""
        data_size = mesh.shape["data"] * mesh.shape["fsdp"]
        if self.G % data_size:
            raise JSEError(f"{self.G} prompts a batch (batch_size {self.bs} / rows_per_prompt "
                           f"{self.R}) do not split over the data axes (data x fsdp = "
                           f"{data_size}): change either")

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompts [G], rows [G * R], prompt by prompt) of optimizer step `step` (0-based)."""
        epoch, i = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.members))
        groups = perm[i * self.G:(i + 1) * self.G]
        rng = np.random.default_rng([self.seed, epoch, i, 1])
        rows = [rng.choice(self.members[g], self.R, replace=len(self.members[g]) < self.R)
                for g in groups]
        return groups, np.concatenate(rows)

    def batch(self, step: int) -> dict:
        """{"prompt", "prompt_pos": [G/P, ...]; "tokens", "positions", "last", "mask" and the
        fields: [G R / P, ...]}: this process's prompts and their rows."""
        n, k = jax.process_count(), jax.process_index()
        if self.G % n:
            raise JSEError(f"{self.G} prompts a batch do not split over {n} processes: change "
                           "batch_size or rows_per_prompt")
        groups, rows = self.indices(step)
        g = np.array_split(groups, n)[k]
        r = np.array_split(rows, n)[k]
        d = self.data
        return {**{k: d[k][g] for k in PROMPT_KEYS},
                **{k: v[r] for k, v in d.items() if k not in PROMPT_KEYS + _META}}

    def describe(self) -> dict:
        """What the data order depends on, stored with each checkpoint."""
        if self._fingerprint is None:
            crc = 0
            for name in sorted(k for k in self.data if k != "keep"):
                crc = zlib.crc32(np.ascontiguousarray(self.data[name]).tobytes(), crc)
            self._fingerprint = f"{crc:08x}-r{self.R}"
        return {"seed": int(self.seed), "examples": int(len(self.data["tokens"])),
                "batch_size": int(self.bs), "fingerprint": self._fingerprint}


def prompt_batches(d: dict, rows: int):
    """Whole prompts of a shared-prompt layout, for scoring: yields (idx int [G * R], batch)
    where every prompt's rows are padded to R, the most rows any prompt has (filler rows repeat
    the prompt's first row; idx -1), and G = max(1, rows // R) prompts a batch (the last batch
    filled with copies of its first prompt). One shape for every batch: one compile."""
    E = len(d["prompt"])
    rows_of = members(d)
    R = max(len(m) for m in rows_of)
    G = max(1, min(E, rows // R))
    for s in range(0, E, G):
        groups = list(range(s, min(s + G, E)))
        groups += [groups[0]] * (G - len(groups))
        idx = np.full((G, R), -1, np.int64)
        take = np.zeros((G, R), np.int64)
        for i, e in enumerate(groups):
            m = rows_of[e]
            if i < min(s + G, E) - s:
                idx[i, :len(m)] = m
            take[i] = np.concatenate([m, np.full(R - len(m), m[0])])
        take = take.ravel()
        batch = {"prompt": d["prompt"][groups], "prompt_pos": d["prompt_pos"][groups],
                 **{k: d[k][take] for k in ("tokens", "positions", "last")}}
        yield idx.ravel(), batch


def hidden_rows(model, batch: dict):
    """The final-normed hidden states f32 [B, S, D] of a batch in either layout: flat
    ({"tokens": [B, S]}, positions 0..S-1) or shared prompts ({"prompt": [G, P], "prompt_pos",
    "tokens": [B, W], "positions"}: the G prompts' keys and values are computed once and each of
    their B / G consecutive rows attends to them; the outputs are those of the rows' own
    tokens)."""
    if "prompt" not in batch:
        return model.forward(batch["tokens"])[0]
    prompt = batch["prompt"]
    cache = init_cache(model.config, prompt.shape[0], prompt.shape[1],
                       dtype=jnp.dtype(model.compute_dtype))
    _, prefix = model.forward(prompt, AttentionContext(batch["prompt_pos"], cache=cache,
                                                       read_cache=False, last_only=True))
    return model.forward(batch["tokens"], AttentionContext(batch["positions"], prefix))[0]


def forward_rows(model, batch: dict):
    """Logits f32 [B, S, V] of a batch in either layout (`hidden_rows`)."""
    return model.logits(hidden_rows(model, batch))
