"""The probe rows' starting point: a logistic fit on the frozen model's state at the probe.

With `lora.probe_rows`, the LM head's Yes / No rows train beside the adapters (`jaxselfeval.lora`).
Trained from zero by the same optimiser as the adapters they move the token by large, noisy
steps (the final state's entries are large); started here instead, they begin as the best
linear read of the frozen model's own final state: the fit of the score
sigmoid(untrained logit(No) - logit(Yes) + w . h) to the training targets, L2-regularised on
standardised features, without an intercept (a row can only add w . h), then split as
No: +w / 2, Yes: -w / 2.
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
def _at_probe(graphdef, state, batch, ids):
    model = without_adapter(nnx.merge(graphdef, state))
    h = hidden_rows(model, batch)
    h = h[jnp.arange(h.shape[0]), batch["last"]]  # [B, D]
    lg = model.token_logits(h, ids)
    return h, lg[:, 1] - lg[:, 0]


def probe_states(model, d: dict, yes: int, no: int, rows: int = 128):
    """The frozen model's final state at each row's probe position and its untrained logit
    difference logit(No) - logit(Yes), for a shared-prompt layout `d` (`encode_shared`):
    (h f32 [N, D], offset f32 [N])."""
    g, st = nnx.split(model)
    ids = jnp.asarray([yes, no], jnp.int32)
    H = np.zeros((len(d["tokens"]), model.config.hidden_size), np.float32)
    off = np.zeros(len(d["tokens"]), np.float32)
    for idx, b in prompt_batches(d, rows):
        h, o = (np.asarray(x) for x in _at_probe(g, st, b, ids))
        keep = idx >= 0
        H[idx[keep]], off[idx[keep]] = h[keep], o[keep]
    return H, off


def fit_direction(H, offset, y, lam: float = 1e-3, iters: int = 30) -> np.ndarray:
    """w [D] minimising the cross-entropy of sigmoid(offset + H w) against soft targets y [N]
    plus lam |w * sd|^2 (the penalty of standardised features), by Newton's method. f64."""
    H, offset, y = (np.asarray(a, np.float64) for a in (H, offset, y))
    sd = H.std(0) + 1e-6
    X = H / sd  # standardised scale, not centred: no intercept
    n, D = X.shape
    v = np.zeros(D)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(offset + X @ v)))
        grad = X.T @ (p - y) / n + 2 * lam * v
        hess = (X * (p * (1 - p))[:, None]).T @ X / n + 2 * lam * np.eye(D)
        step = np.linalg.solve(hess, grad)
        v -= step
        if np.abs(step).max() < 1e-8:
            break
    return v / sd


def fit_probe_rows(model, d: dict, targets, yes: int, no: int, lam: float = 1e-3) -> np.ndarray:
    """The rows' deltas [2, D] (Yes, No) of the logistic fit on the training rows `d`."""
    H, off = probe_states(model, d, yes, no)
    w = fit_direction(H, off, targets, lam)
    log.info("probe rows: logistic fit on %d training rows' frozen states (|w| %.3f)", len(H),
             float(np.linalg.norm(w)))
    return np.stack([-w / 2, w / 2]).astype(np.float32)
