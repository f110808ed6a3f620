"""Capability-aware targets (DESIGN.md "Labels").

For n on-policy samples of one prompt with rewards r_i, the target of sample i is the fraction of
the OTHER samples j with r_j <= r_i + margin (win or tie): the probability that a fresh sample
would not beat it. With 0/1 verifier rewards a correct answer gets 1 and a wrong one the share of
wrong samples among the others, so a prompt the model almost never solves does not push it to
resample forever. Mid-generation rows are the same response truncated at chosen token counts,
with the same target.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxselfeval.errors import JSEError


def capability_targets(rewards: Sequence[float], margin: float = 0.0) -> np.ndarray:
    """rewards [n] (0/1 or scalar) -> f32 targets [n] in [0, 1].

    target_i = #{j != i : r_j <= r_i + margin} / (n - 1).
    n == 1: the target is 1.0 (no other sample is evidence that a restart does better).
    n == 0: an empty array.
    """
    r = np.asarray(rewards, np.float64).reshape(-1)
    if not math.isfinite(float(margin)):
        raise JSEError(f"margin must be a finite number, got {margin}")
    if not np.all(np.isfinite(r)):
        bad = int(np.flatnonzero(~np.isfinite(r))[0])
        raise JSEError(f"reward of sample {bad} is {r[bad]}: rewards must be finite numbers "
                       "(check the verifier / reward model output)")
    n = len(r)
    if n <= 1:
        return np.ones(n, np.float32)
    not_beaten = r[None, :] <= r[:, None] + margin  # [i, j]: sample j does not beat sample i
    np.fill_diagonal(not_beaten, False)
    return (not_beaten.sum(1) / (n - 1)).astype(np.float32)


# What the token is trained to predict: "capability" (the paper's, above: the share of the other
# samples that do not beat this one) or "reward" (the 0/1 verifier's reward itself: the
# probability that this answer is right).
TARGETS = ("capability", "reward")


def token_targets(rewards: Sequence[float], target: str = "capability",
                  margin: float = 0.0) -> np.ndarray:
    """rewards [n] of one prompt's samples -> the token's targets f32 [n] under `target`."""
    if target == "capability":
        return capability_targets(rewards, margin)
    if target != "reward":
        raise JSEError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    r = np.asarray(rewards, np.float32).reshape(-1)
    if np.any(~np.isfinite(r) | (r < 0) | (r > 1)):
        raise JSEError("target=reward needs rewards in [0, 1] (a verifier's 0/1): use "
                       "target=capability with a reward model's scalar rewards")
    return r


def truncation_points(response_len: int, points: Sequence[int]) -> list[int]:
    """The token counts (sorted, unique) of `points` strictly shorter than the response.

    A copy truncated at p keeps the first p response tokens; p >= response_len would be the full
    response again, so it is left out. Points must be positive.
    """
    out = set()
    for p in points:
        if int(p) != p or int(p) <= 0:
            raise JSEError(f"truncation point {p!r} must be a positive token count "
                           "(e.g. truncations=[8,16])")
        if int(p) < int(response_len):
            out.add(int(p))
    return sorted(out)


def capability_rows(prompt_ids: Sequence[int], responses: Sequence[Sequence[int]],
                    rewards: Sequence[float], *, truncations: Sequence[int] = (),
                    margin: float = 0.0, **extra) -> list[dict]:
    """Rows of one prompt: each sample in full, then its truncated copies, all with its target.

    prompt_ids: [P] token ids; responses: n lists of token ids; rewards: [n].
    Each row: prompt_ids, response_ids, truncation (0 = full), target, reward, candidate,
    plus the `extra` key/values (e.g. example=..., difficulty=...).
    """
    if len(responses) != len(rewards):
        raise JSEError(f"{len(responses)} responses but {len(rewards)} rewards: give one reward "
                       "per sample")
    targets = capability_targets(rewards, margin)
    rows = []
    for c, (resp, rew, t) in enumerate(zip(responses, rewards, targets)):
        resp = [int(x) for x in resp]
        for tr in [0] + truncation_points(len(resp), truncations):
            rows.append({"prompt_ids": [int(x) for x in prompt_ids],
                         "response_ids": resp if tr == 0 else resp[:tr], "truncation": tr,
                         "target": float(t), "reward": float(rew), "candidate": c, **extra})
    return rows
