"""Losses: `loss_fn(model, batch) -> (scalar loss, metrics dict)`; pluggable into the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxselfeval.model.context import AttentionContext

# lm_loss computes the LM head and cross-entropy over this many positions at a time (each chunk
# rematerialised in the backward pass): the [batch, seq, vocab] f32 logits are never all held
# (Llama 3's 128k vocabulary at seq 8192 is 4 GiB a sequence)
LOSS_CHUNK = 1024


def _next_token(logits, batch):
    """(mean cross-entropy, accuracy, target count) of logits f32 [B, S, V] predicting
    tokens[:, t+1] where mask[:, t] is 1."""
    tokens, m = batch["tokens"], batch["mask"][:, :-1]
    logits, targets = logits[:, :-1], tokens[:, 1:]
    n = jnp.maximum(m.sum(), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * m).sum() / n
    acc = ((jnp.argmax(logits, -1) == targets) * m).sum() / n
    return loss, acc, m.sum()


def _chunked_next_token(model, h, batch, chunk):
    """`_next_token` from final hidden states h f32 [B, S, D], the logits formed `chunk`
    positions at a time under jax.checkpoint (a lax.scan over sequence chunks)."""
    tokens, m = batch["tokens"], batch["mask"]
    B, S, D = h.shape
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    m = m.at[:, -1].set(0.0)  # the last position predicts nothing
    n = -(-S // chunk)
    pad = n * chunk - S
    h, targets, m = (jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
                     for x in (h, targets, m))

    def split(x):
        return jnp.moveaxis(x.reshape(B, n, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(hc, tc, mc):
        logits = model.logits(hc)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tc)
        hit = jnp.argmax(logits, -1) == tc
        return (ce * mc).sum(), (hit * mc).sum()

    def body(acc, xs):
        ce, hit = one(*xs)
        return (acc[0] + ce, acc[1] + hit), None

    zero = jnp.zeros((), jnp.float32)
    (ce, hit), _ = jax.lax.scan(body, (zero, zero), (split(h), split(targets), split(m)))
    total = m.sum()
    nn = jnp.maximum(total, 1.0)
    return ce / nn, hit / nn, total


def lm_loss(model, batch):
    """Next-token cross-entropy on masked (assistant) tokens.

    batch: tokens int32 [B, S]; mask f32 [B, S] (1 where tokens[:, t+1] is a target).
    Sequences longer than LOSS_CHUNK compute the LM head chunk by chunk (same loss).
    """
    if batch["tokens"].shape[1] > LOSS_CHUNK:
        h, _ = model.forward(batch["tokens"])
        loss, acc, count = _chunked_next_token(model, h, batch, LOSS_CHUNK)
    else:
        loss, acc, count = _next_token(model(batch["tokens"]), batch)
    return loss, {"loss": loss, "token_acc": acc, "tokens": count}


def lm_loss_with_exit(exit_layer: int, weight: float = 1.0):
    """lm_loss plus `weight` x the same loss read after layer `exit_layer` through the final norm
    and LM head (an early exit, as LayerSkip trains Llama). The prediction then forms
    `exit_layer` layers in, and the layers above it are left to compare it with the token that
    came: what a probe at the end has to read to tell a slipped token (the metrics' "loss" is
    the final layer's)."""

    def loss_fn(model, batch):
        x = model.embed_tokens(batch["tokens"])
        ctx = AttentionContext()
        x, _ = model.fold(x, ctx, stop=exit_layer)
        early = model.logits(model.norm(x))  # the early exit: after layer `exit_layer`
        x, _ = model.fold(x, ctx, start=exit_layer)
        logits = model.logits(model.norm(x))
        loss, acc, count = _next_token(logits, batch)
        exit_loss = _next_token(early, batch)[0]
        return loss + weight * exit_loss, {"loss": loss, "exit_loss": exit_loss,
                                           "token_acc": acc, "tokens": count}

    return loss_fn
