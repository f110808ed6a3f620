"""Losses: `loss_fn(model, batch) -> (scalar loss, metrics dict)`; pluggable into the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def lm_loss(model, batch):
    """Next-token cross-entropy on masked (assistant) tokens.

    batch: tokens int32 [B, S]; mask f32 [B, S] (1 where tokens[:, t+1] is a target).
    """
    tokens, mask = batch["tokens"], batch["mask"]
    logits = model(tokens)[:, :-1]
    targets = tokens[:, 1:]
    m = mask[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    n = jnp.maximum(m.sum(), 1.0)
    loss = (ce * m).sum() / n
    acc = ((jnp.argmax(logits, -1) == targets) * m).sum() / n
    return loss, {"loss": loss, "token_acc": acc, "tokens": m.sum()}


del jax
