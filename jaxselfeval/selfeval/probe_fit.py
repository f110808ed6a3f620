"""The probe rows' starting point: a logistic fit on the frozen model's state at the probe.

With `lora.probe_rows`, the LM head's Yes / No rows train beside the adapters (`jaxselfeval.lora`).
Trained from zero by the same optimiser as the adapters they move the token by large, noisy
steps (the final state's entries are large); started here instead, they begin as the best
linear read of the frozen model's own final state: the fit of the score
sigmoid(untrained logit(No) - logit(Yes) + w . h) to the training targets, L2-regularised on
standardised features, without an intercept (a row can only add w . h), then split as
No: +w / 2, Yes: -w / 2. The rows move those two logits wherever the model writes, so the fit
also pays for the mean squared shift w . h at the responses' own positions (unpenalised, the
fit moved them by so much that the KL to the base was 1.8 nats after 20 steps).
"""

from __future__ import annotations

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
def _at_probe(graphdef, state, batch, mask, ids):
    model = without_adapter(nnx.merge(graphdef, state))
    hs = hidden_rows(model, batch)  # [B, W, D]
    h = hs[jnp.arange(hs.shape[0]), batch["last"]]  # [B, D]
    lg = model.token_logits(h, ids)
    m = mask[..., None] * hs  # the response positions' states (where the policy writes)
    second = jnp.einsum("bsd,bse->de", m, hs, precision=jax.lax.Precision.HIGHEST)
    return h, lg[:, 1] - lg[:, 0], second, mask.sum()


def probe_states(model, d: dict, yes: int, no: int, rows: int = 128):
    """The frozen model's final state at each row's probe position, its untrained logit
    difference logit(No) - logit(Yes), and the second moment of the states at the responses'
    own positions (where a row delta would move the policy's next token), for a shared-prompt
    layout `d` (`encode_shared`): (h f32 [N, D], offset f32 [N], second f64 [D, D])."""
    g, st = nnx.split(model)
    ids = jnp.asarray([yes, no], jnp.int32)
    D = model.config.hidden_size
    H = np.zeros((len(d["tokens"]), D), np.float32)
    off = np.zeros(len(d["tokens"]), np.float32)
    second, count = np.zeros((D, D)), 0.0
    for idx, b in prompt_batches(d, rows):
        keep = idx >= 0
        mask = np.where(keep[:, None], d["mask"][np.maximum(idx, 0)], 0.0).astype(np.float32)
        h, o, sm, n = _at_probe(g, st, b, mask, ids)
        H[idx[keep]], off[idx[keep]] = np.asarray(h)[keep], np.asarray(o)[keep]
        second += np.asarray(sm, np.float64)
        count += float(n)
    return H, off, second / max(count, 1.0)


def fit_direction(H, offset, y, lam: float = 1e-3, second=None, mu: float = 0.0,
                  iters: int = 30) -> np.ndarray:
    """w [D] minimising the cross-entropy of sigmoid(offset + H w) against soft targets y [N]
    plus lam |w * sd|^2 (the penalty of standardised features) plus mu w' second w (the mean
    squared logit shift where the policy writes: `second` [D, D] the states' second moment
    there), by Newton's method. f64."""
    H, offset, y = (np.asarray(a, np.float64) for a in (H, offset, y))
    sd = H.std(0) + 1e-6
    X = H / sd  # standardised scale, not centred: no intercept
    n, D = X.shape
    P = 2 * lam * np.eye(D)
    if second is not None and mu:
        P = P + 2 * mu * np.asarray(second, np.float64) / np.outer(sd, sd)
    v = np.zeros(D)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(offset + X @ v)))
        grad = X.T @ (p - y) / n + P @ v
        hess = (X * (p * (1 - p))[:, None]).T @ X / n + P
        step = np.linalg.solve(hess, grad)
        v -= step
        if np.abs(step).max() < 1e-8:
            break
    return v / sd


def fit_probe_rows(model, d: dict, targets, yes: int, no: int, lam: float = 1e-3,
                   mu: float = 0.05) -> np.ndarray:
    """The rows' deltas [2, D] (Yes, No) of the logistic fit on the training rows `d`, its
    logit shift at the responses' own positions held down by `mu` (the policy must stay)."""
    H, off, second = probe_states(model, d, yes, no)
    w = fit_direction(H, off, targets, lam, second, mu)
    log.info("probe rows: logistic fit on %d training rows' frozen states (|w| %.3f; logit "
             "shift at the probe: std %.2f; where the policy writes: rms %.2f)", len(H),
             float(np.linalg.norm(w)), float((H @ w).std()), float(np.sqrt(w @ second @ w)))
    return np.stack([-w / 2, w / 2]).astype(np.float32)
