"""The probe rows' starting point: a logistic fit on the frozen model's state at the probe.

With `lora.probe_rows`, the LM head's Yes / No rows train beside the adapters (`jaxselfeval.lora`).
Trained from zero by the same optimiser as the adapters they move the token by large, noisy
steps (the final state's entries are large); started here instead, they begin as the best
linear read of the frozen model's own final state: the fit of the score
sigmoid(untrained logit(No) - logit(Yes) + w . h) to the training targets, L2-regularised on
standardised features, without an intercept (a row can only add w . h), then split as
No: +w / 2, Yes: -w / 2. The rows move those two logits wherever the model writes too, so the
fit is held to a budget of how much likelier the policy becomes to write Yes or No there,
computed exactly from the base's Yes / No probabilities at the responses' own positions
(unbudgeted, |w| was 77 and the KL to the base 1.8 nats after 20 LoRA steps; held to a mean KL
of 0.01 nats instead, 7% of responses had a Yes or No written into them)."""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxselfeval.model.adapter import without_adapter
from jaxselfeval.selfeval.rows import hidden_rows, prompt_batches

log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnums=0)
def _at_probe(graphdef, state, batch, ids):
    model = without_adapter(nnx.merge(graphdef, state))
    hs = hidden_rows(model, batch)  # [B, W, D]
    h = hs[jnp.arange(hs.shape[0]), batch["last"]]  # [B, D]
    lg = model.token_logits(h, ids)
    # the base's Yes / No probabilities at every position: where the policy writes, a row delta
    # moves exactly these two logits
    logp = jax.nn.log_softmax(model.logits(hs), axis=-1)[..., ids]  # [B, W, 2]
    return h, lg[:, 1] - lg[:, 0], hs, jnp.exp(logp)


@dataclasses.dataclass
class ProbeStates:
    """What the fit reads, from one pass of the frozen model over the training rows.

    h f32 [N, D]: the final state at each row's probe position; offset f32 [N]: its untrained
    logit(No) - logit(Yes). At (up to `max_positions` of) the responses' own positions, where
    the policy writes: states f32 [M, D], and the base's Yes / No probabilities p f32 [M, 2]."""

    h: np.ndarray
    offset: np.ndarray
    states: np.ndarray
    p: np.ndarray


def probe_states(model, d: dict, yes: int, no: int, rows: int = 64,
                 max_positions: int = 20000) -> ProbeStates:
    """`ProbeStates` of a shared-prompt layout `d` (`encode_shared`); the response positions
    are every k-th one, k the smallest step that keeps at most `max_positions`."""
    g, st = nnx.split(model)
    ids = jnp.asarray([yes, no], jnp.int32)
    N, D = len(d["tokens"]), model.config.hidden_size
    H, off = np.zeros((N, D), np.float32), np.zeros(N, np.float32)
    every = max(1, -(-int(np.asarray(d["mask"]).sum()) // max_positions))
    states, probs, seen = [], [], 0
    for idx, b in prompt_batches(d, rows):
        keep = idx >= 0
        h, o, hs, p = _at_probe(g, st, b, ids)
        H[idx[keep]], off[idx[keep]] = np.asarray(h)[keep], np.asarray(o)[keep]
        mask = d["mask"][idx[keep]] > 0  # [rows kept, W]: the responses' own tokens
        at = np.flatnonzero(mask.ravel())
        pick = at[(seen + np.arange(len(at))) % every == 0]
        seen += len(at)
        states.append(np.asarray(hs)[keep].reshape(-1, D)[pick])
        probs.append(np.asarray(p)[keep].reshape(-1, 2)[pick])
    return ProbeStates(H, off, np.concatenate(states), np.concatenate(probs))


def probe_offsets(model, h, yes: int, no: int) -> np.ndarray:
    """The frozen model's logit(No) - logit(Yes) at final states h [N, D] at the probe, f32 [N]."""
    lg = np.asarray(without_adapter(model).token_logits(jnp.asarray(h), jnp.asarray([yes, no])))
    return lg[:, 1] - lg[:, 0]


def _shifted(w, states, p):
    """The base's Yes / No probabilities p [M, 2] after rows Yes -w / 2, No +w / 2 move their
    logits at `states` [M, D]: (the shifts d [M, 2], the log of the new partition over the
    base's [M], the new probabilities [M, 2]), f64."""
    s = np.asarray(states, np.float64) @ np.asarray(w, np.float64) / 2
    d = np.stack([-s, s], axis=1)
    p = np.asarray(p, np.float64)
    log_z = np.log1p((p * np.expm1(d)).sum(1))
    return d, log_z, p * np.exp(d - log_z[:, None])


def policy_kl(w, states, p) -> float:
    """The mean KL(base || with the rows) of the policy's next-token distribution at `states`
    [M, D], exactly: rows Yes -w / 2, No +w / 2 move only those two logits, whose base
    probabilities are p [M, 2]."""
    d, log_z, _ = _shifted(w, states, p)
    return float(np.mean(log_z - (np.asarray(p, np.float64) * d).sum(1)))


def policy_leak(w, states, p) -> float:
    """The probability the rows add to the policy writing Yes or No, per token written (the
    mean over `states` [M, D] of the rise of P(Yes) + P(No), where it rises), exactly. A mean
    KL can be small while a few positions are pushed to Yes or No, and one "No" written makes
    the next likelier: this is the figure to hold down."""
    _, _, q = _shifted(w, states, p)
    return float(np.maximum(q.sum(1) - np.asarray(p, np.float64).sum(1), 0.0).mean())


def rank_pairs(groups, right) -> np.ndarray:
    """Every (right, wrong) pair of rows within a group: groups [N] (e.g. a prompt and a
    truncation), right bool [N] -> int [P, 2] row indices (right first)."""
    groups, right = np.asarray(groups), np.asarray(right, bool)
    out = [np.zeros((0, 2), np.int64)]
    for g in np.unique(groups):
        ix = np.flatnonzero(groups == g)
        r, w = ix[right[ix]], ix[~right[ix]]
        if len(r) and len(w):
            out.append(np.stack(np.meshgrid(r, w, indexing="ij"), -1).reshape(-1, 2))
    return np.concatenate(out)


def fit_direction(H, offset, y, lam: float = 1e-3, second=None, mu: float = 0.0,
                  pairs=None, rank_weight: float = 0.0, iters: int = 30) -> np.ndarray:
    """w [D] minimising the cross-entropy of sigmoid(offset + H w) against soft targets y [N]
    plus lam |w * sd|^2 (the penalty of standardised features) plus mu w' second w (`second`
    [D, D]: a quadratic cost of w; `fit_within` passes the states' second moment where the
    policy writes, the mean squared logit shift there) plus rank_weight times the mean logistic
    loss of each of `pairs` ([P, 2]: a right row, a wrong row of one prompt, `rank_pairs`)
    ranked the wrong way round (the read within a prompt, what Best-of-n picks by), by Newton's
    method. f64."""
    H, offset, y = (np.asarray(a, np.float64) for a in (H, offset, y))
    sd = H.std(0) + 1e-6
    X = H / sd  # standardised scale, not centred: no intercept
    n, D = X.shape
    P = 2 * lam * np.eye(D)
    if second is not None and mu:
        P = P + 2 * mu * np.asarray(second, np.float64) / np.outer(sd, sd)
    ranked = pairs is not None and rank_weight > 0 and len(pairs) > 0
    if ranked:
        pairs = np.asarray(pairs)
        dX = X[pairs[:, 0]] - X[pairs[:, 1]]  # [P, D]
        d_off = offset[pairs[:, 0]] - offset[pairs[:, 1]]
    v = np.zeros(D)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(offset + X @ v)))
        grad = X.T @ (p - y) / n + P @ v
        hess = (X * (p * (1 - p))[:, None]).T @ X / n + P
        if ranked:  # loss log(1 + exp(-gap)) of each pair's score gap
            q = 1 / (1 + np.exp(d_off + dX @ v))
            grad = grad - rank_weight * dX.T @ q / len(dX)
            hess = hess + rank_weight * (dX * (q * (1 - q))[:, None]).T @ dX / len(dX)
        step = np.linalg.solve(hess, grad)
        v -= step
        if np.abs(step).max() < 1e-8:
            break
    return v / sd


def fit_within(ps: ProbeStates, y, leak: float, lam: float = 1e-3,
               steps: int = 24) -> tuple[np.ndarray, float]:
    """The logistic fit's w whose `policy_leak` at the response positions is at most `leak`:
    unpenalised if it is within; else the fit that also pays mu times the mean squared logit
    shift there (the states' second moment: it holds down the large shifts that make the policy
    write Yes or No), mu found by bisection in log space. Returns (w [D], its leak)."""
    w = fit_direction(ps.h, ps.offset, y, lam)
    got = policy_leak(w, ps.states, ps.p)
    if got <= leak:
        return w, got
    X = np.asarray(ps.states, np.float64)
    second = X.T @ X / len(X)
    lo, hi = -8.0, 8.0  # log10 mu
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        w_mid = fit_direction(ps.h, ps.offset, y, lam, second, 10 ** mid)
        k = policy_leak(w_mid, ps.states, ps.p)
        if k <= leak:
            best, hi = (w_mid, k), mid
        else:
            lo = mid
    if best is None:  # even mu = 1e8 leaks too much: no read at all
        return np.zeros_like(w), 0.0
    return best


def fit_probe_rows(ps: ProbeStates, targets, leak: float = 1e-4,
                   lam: float = 1e-3) -> np.ndarray:
    """The rows' deltas [2, D] (Yes, No) of the logistic fit on the training rows' `ProbeStates`,
    leaking at most `leak` Yes / No per token the policy writes (the policy must stay)."""
    w, got = fit_within(ps, targets, leak, lam)
    log.info("probe rows: logistic fit on %d training rows' frozen states (|w| %.3f; logit "
             "shift at the probe: std %.2f; where the policy writes, over %d positions: Yes / "
             "No added %.2e a token, KL %.4f nats a token)", len(ps.h),
             float(np.linalg.norm(w)), float((ps.h @ w).std()), len(ps.states), got,
             policy_kl(w, ps.states, ps.p))
    return yes_no_deltas(w)


def fit_probe_head(ps: ProbeStates, targets, pairs=None, rank_weight: float = 0.0,
                   lam: float = 1e-3) -> np.ndarray:
    """The probe head's deltas [2, D] (Yes, No): the logistic fit on the training rows'
    `ProbeStates`, plus `rank_weight` times the within-prompt ranking of `pairs`. Read at the
    probe only (`model.probe_head`), they leave the policy as it is: no budget."""
    w = fit_direction(ps.h, ps.offset, targets, lam, pairs=pairs, rank_weight=rank_weight)
    log.info("probe head: logistic fit on %d training rows' frozen states%s (|w| %.3f; logit "
             "shift at the probe: std %.2f)", len(ps.h),
             f", ranking {len(pairs)} pairs within a prompt x {rank_weight:g}" if rank_weight
             and pairs is not None else "", float(np.linalg.norm(w)), float((ps.h @ w).std()))
    return yes_no_deltas(w)


def yes_no_deltas(w) -> np.ndarray:
    """The rows' deltas f32 [2, D] (Yes, No) of a fitted w [D]: No +w / 2, Yes -w / 2 (their
    logit difference moves by w . h)."""
    return np.stack([-w / 2, w / 2]).astype(np.float32)
