"""Optimizer and the jitted, sharded train step (grad accumulation by `lax.scan`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxselfeval.sharding import batch_sharding, state_shardings


def make_schedule(cfg):
    """step -> learning rate: linear warmup from 0 to cfg.lr, cosine decay to lr * min_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1),
        cfg.lr * cfg.min_lr_ratio)


def decays(axes, shape) -> bool:
    """Whether weight decay applies to a parameter with logical `axes` (None: unknown) and
    `shape`: matrices decay; norm scales ("norm"), vectors such as biases (one axis besides the
    stacking "layers" axis) and the embedding table ("vocab" first, a lookup) do not. Without
    axes, a parameter decays when it has two or more dimensions."""
    if axes is None:
        return len(shape) > 1
    axes = [a for a in axes if a != "layers"]
    return len(axes) > 1 and "norm" not in axes and axes[0] != "vocab"


def decay_mask(params):
    """The weight-decay mask of an nnx.State (or any pytree): one bool per parameter, decided by
    its `logical_axes` metadata (`decays`); a prefix of `params` for `optax.masked`."""

    def one(v):
        if isinstance(v, nnx.Variable):
            return decays(v.get_metadata().get("logical_axes"), v.shape)
        return decays(None, v.shape)

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW with linear warmup + cosine decay, global-norm clipping, decay on matrices only
    (not on norms, biases or the embedding table: `decays`); moments in the parameters' dtype
    (f32 master weights)."""
    sched = make_schedule(cfg)

    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(sched, b1=0.9, b2=cfg.b2, weight_decay=cfg.weight_decay,
                                   mask=decay_mask))


def split_trainable(model):
    """(graphdef, trainable State, frozen State); nnx.merge(graphdef, trainable, frozen) is the
    model again. With LoRA adapters (`model.lora`) their factors (nnx.LoRAParam) train and the
    base is frozen; without, every nnx.Param trains and the frozen State is empty."""
    trainable = nnx.LoRAParam if getattr(model, "lora", None) is not None else nnx.Param
    return nnx.split(model, trainable, ...)


def make_train_step(graphdef, loss_fn, tx, *, accum: int = 1):
    """step(params, frozen, opt_state, batch) -> (params, opt_state, metrics), for full and
    LoRA training alike (`split_trainable`).

    params: the trainable nnx.State (f32 master weights; gradients and optimizer state exist for
    these only); frozen: the rest of the model, read-only. Batch leaves [B, ...] are split into
    `accum` micro-batches (a `lax.scan`) whose gradients and metrics are averaged (equal to one
    big batch when the micro-batches weigh the same, e.g. the same number of loss tokens).
    `loss_fn(model, batch) -> (loss, metrics)`; the model computes in its compute_dtype.
    """

    def grad_fn(params, frozen, mb):
        def lf(p):
            return loss_fn(nnx.merge(graphdef, p, frozen), mb)

        (_, metrics), g = jax.value_and_grad(lf, has_aux=True)(params)
        return g, metrics

    def step(params, frozen, opt_state, batch):
        if accum == 1:
            grads, metrics = grad_fn(params, frozen, batch)
        else:
            mbs = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(acc, mb):
                g, m = grad_fn(params, frozen, mb)
                return jax.tree.map(jnp.add, acc, g), m

            grads, ms = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), mbs)
            grads = jax.tree.map(lambda g: g / accum, grads)
            metrics = jax.tree.map(jnp.mean, ms)
        metrics["grad_norm"] = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return step


def opt_state_shardings(tx, params, param_shardings, mesh):
    """The shardings of tx.init(params): a moment takes its parameter's (matched by key-path
    suffix in `param_shardings`), everything else (step counts) is replicated."""
    flat = jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    by_path = {tuple(map(str, k)): v for k, v in flat}
    rep = NamedSharding(mesh, PartitionSpec())

    def pick(path, _):
        keys = tuple(map(str, path))
        return next((by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in by_path), rep)

    return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, params))


def init_opt_state(tx, params, mesh):
    """Optimizer state on `mesh`, placed by `opt_state_shardings`."""
    o_sh = opt_state_shardings(tx, params, state_shardings(params, mesh), mesh)
    return jax.jit(tx.init, out_shardings=o_sh)(params)


def jit_train_step(step, params, frozen, opt_state, mesh):
    """jax.jit with explicit shardings (the model's by logical axes, the batch over the data
    axes); the trainable params and the optimizer state are donated, the frozen rest is not."""
    p_sh, f_sh = state_shardings(params, mesh), state_shardings(frozen, mesh)
    o_sh = jax.tree.map(lambda x: x.sharding, opt_state)
    return jax.jit(step, in_shardings=(p_sh, f_sh, o_sh, batch_sharding(mesh)),
                   out_shardings=(p_sh, o_sh, None), donate_argnums=(0, 2))
