"""The training loop: resume, progress bar, metrics JSONL, SIGTERM save, NaN stop, HF export."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxselfeval.errors import JSEError
from jaxselfeval.sharding import batch_sharding, make_mesh, shard_model
from jaxselfeval.train.checkpoint import Checkpointer
from jaxselfeval.train.step import init_opt_state, jit_train_step, make_optimizer, make_train_step

log = logging.getLogger(__name__)


class _Preempted:
    """Set by SIGTERM (TPU preemption): the loop saves a checkpoint and stops."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            self.flag = True

        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *a):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run_training(model, batches, loss_fn, cfg, *, out_dir, progress: bool = True, devices=None,
                 on_step=None):
    """Train `model` (in place) for cfg.steps optimizer steps on `batches` (a `Batches`).

    Resumes from the latest checkpoint in out_dir/ckpt; returns (model, history list of
    metric dicts). `on_step(step, metrics, get_model)` is called after every step (host side;
    `get_model()` gives the model with the current parameters, e.g. for validation). Raises JSEError on NaN loss (the last good checkpoint is kept).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh, devices)
    data_size = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.batch_size % data_size or (cfg.batch_size // cfg.grad_accum) % data_size:
        raise JSEError(f"batch_size {cfg.batch_size} (micro-batch {cfg.batch_size // cfg.grad_accum})"
                       f" is not divisible by the data axes (data x fsdp = {data_size}): change "
                       "batch_size or the mesh")
    shard_model(model, mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(cfg)
    opt_state = init_opt_state(tx, params, mesh)
    ckpt = Checkpointer(out_dir, keep=cfg.keep_checkpoints, every=cfg.checkpoint_every,
                        model_config=model.config)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        params, opt_state = ckpt.restore(latest, params, opt_state)
        start = latest
        log.info("resumed from step %d in %s", latest, out_dir)
    step_fn = jit_train_step(make_train_step(graphdef, loss_fn, tx, accum=cfg.grad_accum),
                             params, opt_state, mesh)
    b_sh = batch_sharding(mesh)
    metrics_path = out_dir / "metrics.jsonl"
    history = []
    if metrics_path.exists():  # keep the history up to the resumed step
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        history = [h for h in history if h["step"] <= start]
    mf = open(metrics_path, "w")
    for h in history:
        mf.write(json.dumps(h) + "\n")
    last_good = latest
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True)
    t0 = time.time()
    try:
        with _Preempted() as pre:
            for step in range(start, cfg.steps):
                batch = batches.batch(step)
                if jax.process_count() > 1:  # each host holds its slice of the global batch
                    batch = {k: jax.make_array_from_process_local_data(b_sh, v)
                             for k, v in batch.items()}
                params, opt_state, m = step_fn(params, opt_state, batch)
                loss = float(m["loss"])
                if not math.isfinite(loss):
                    ckpt.wait()
                    raise JSEError(f"loss is {loss} at step {step + 1}: training stopped; the last "
                                   f"good checkpoint (step {last_good}) is kept in {out_dir}")
                done = step + 1
                rec = {"step": done, **{k: float(v) for k, v in m.items()},
                       "elapsed_s": round(time.time() - t0, 2)}
                history.append(rec)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
                if ckpt.save(done, params, opt_state, force=(done == cfg.steps or pre.flag)):
                    last_good = done
                if on_step is not None:
                    on_step(done, rec, lambda p=params: nnx.merge(graphdef, p))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if pre.flag:
                    log.warning("SIGTERM: saved a checkpoint at step %d, stopping", done)
                    break
    finally:
        bar.close()
        mf.close()
        ckpt.close()
    nnx.update(model, params)
    return model, history
