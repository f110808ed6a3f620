"""Losses: `loss_fn(model, batch) -> (scalar loss, metrics dict)`; pluggable into the step."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def _next_token(logits, batch):
    """(mean cross-entropy, accuracy, target count) of logits f32 [B, S, V] predicting
    tokens[:, t+1] where mask[:, t] is 1."""
    tokens, m = batch["tokens"], batch["mask"][:, :-1]
    logits, targets = logits[:, :-1], tokens[:, 1:]
    n = jnp.maximum(m.sum(), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * m).sum() / n
    acc = ((jnp.argmax(logits, -1) == targets) * m).sum() / n
    return loss, acc, m.sum()


def lm_loss(model, batch):
    """Next-token cross-entropy on masked (assistant) tokens.

    batch: tokens int32 [B, S]; mask f32 [B, S] (1 where tokens[:, t+1] is a target).
    """
    loss, acc, count = _next_token(model(batch["tokens"]), batch)
    return loss, {"loss": loss, "token_acc": acc, "tokens": count}


def lm_loss_with_exit(exit_layer: int, weight: float = 1.0):
    """lm_loss plus `weight` x the same loss read after layer `exit_layer` through the final norm
    and LM head (an early exit, as LayerSkip trains Llama). The prediction then forms
    `exit_layer` layers in, and the layers above it are left to compare it with the token that
    came: what a probe at the end has to read to tell a slipped token (the metrics' "loss" is
    the final layer's)."""

    def loss_fn(model, batch):
        (logits, early), _ = model.forward(batch["tokens"], exit_layer=exit_layer)
        loss, acc, count = _next_token(logits, batch)
        exit_loss = _next_token(early, batch)[0]
        return loss + weight * exit_loss, {"loss": loss, "exit_loss": exit_loss,
                                           "token_acc": acc, "tokens": count}

    return loss_fn
