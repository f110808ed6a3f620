"""Losses: `loss_fn(model, batch) -> (scalar loss, metrics dict)`; pluggable into the step."""

from __future__ import annotations

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


def lm_loss_with_exit(exit_layer: int, weight: float = 1.0):
    """lm_loss plus `weight` x the same loss read after layer `exit_layer` through the final norm
    and LM head (an early exit, as LayerSkip trains Llama). The prediction then forms
    `exit_layer` layers in, and the layers above it are left to compare it with the token that
    came: what a probe at the end has to read to tell a slipped token (the metrics' "loss" is
    the final layer's)."""

    def loss_fn(model, batch):
        tokens, m = batch["tokens"], batch["mask"][:, :-1]
        (logits, early), _ = model.forward(tokens, exit_layer=exit_layer)
        targets, n = tokens[:, 1:], jnp.maximum(m.sum(), 1.0)

        def ce(lg):
            return (optax.softmax_cross_entropy_with_integer_labels(lg[:, :-1], targets) * m).sum() / n

        loss, exit_loss = ce(logits), ce(early)
        acc = ((jnp.argmax(logits[:, :-1], -1) == targets) * m).sum() / n
        return loss + weight * exit_loss, {"loss": loss, "exit_loss": exit_loss, "token_acc": acc,
                                           "tokens": m.sum()}

    return loss_fn

