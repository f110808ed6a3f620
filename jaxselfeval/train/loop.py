"""The training loop: resume, progress bar, metrics (JSONL + TensorBoard), SIGTERM save, NaN stop.

    model, history = run_training(model, Batches(...), lm_loss, cfg, out_dir="runs/x")

out_dir/metrics.jsonl gets one JSON record per `log_every` steps (step, loss, token_acc,
grad_norm, lr, tokens_per_s, elapsed_s); out_dir/tb/ TensorBoard events when tensorboardX or
tensorboard is installed; out_dir/ckpt/ the orbax checkpoints (see `checkpoint.py`).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import jax
from flax import nnx
from tqdm import tqdm

from jaxselfeval.errors import JSEError
from jaxselfeval.sharding import batch_sharding, make_mesh, shard_model
from jaxselfeval.train.checkpoint import Checkpointer
from jaxselfeval.train.step import (init_opt_state, jit_train_step, make_optimizer, make_schedule,
                                    make_train_step, split_trainable)

log = logging.getLogger(__name__)


class Preempted(JSEError):
    """SIGTERM (e.g. TPU preemption): a checkpoint was saved; rerunning the command resumes."""


class _SigTerm:
    """Sets `.flag` on SIGTERM (one process; on several, jax's preemption sync point is used)."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            self.flag = True

        if jax.process_count() == 1:
            try:
                self._old = signal.signal(signal.SIGTERM, handler)
            except ValueError:  # not the main thread
                self._old = None
        return self

    def __exit__(self, *a):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _tb_writer(path):
    """A TensorBoard SummaryWriter if tensorboardX or tensorboard is installed, else None."""
    for mod in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            m = __import__(mod, fromlist=["SummaryWriter"])
            return m.SummaryWriter(str(path))
        except Exception:  # noqa: BLE001 - not installed (or tensorboard missing under torch)
            continue
    return None


def check_batch(cfg, mesh):
    """The global batch and each micro-batch must split evenly over data x fsdp."""
    data_size = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.batch_size // cfg.grad_accum
    if cfg.batch_size % data_size or micro % data_size:
        raise JSEError(f"batch_size {cfg.batch_size} (micro-batch {micro}) is not divisible by the "
                       f"data axes (data x fsdp = {data_size}): change batch_size, grad_accum or "
                       "the mesh")


def _check_data(saved: dict, now: dict, out_dir):
    for k in ("seed", "examples", "batch_size", "fingerprint"):
        if k in saved and saved[k] != now[k]:
            raise JSEError(f"the checkpoint in '{out_dir}' was trained on other data ({k}: "
                           f"{saved[k]} there, {now[k]} here), so its data position does not "
                           "apply: use the same data and seed, or a new out_dir")


def run_training(model, batches, loss_fn, cfg, *, out_dir, progress: bool = True, devices=None,
                 on_step=None):
    """Train `model` (in place) for cfg.steps optimizer steps on `batches` (a `Batches`).
    A model with LoRA adapters (`jaxselfeval.lora.add_lora`) trains the adapters only.

    Resumes from the latest checkpoint in out_dir/ckpt (parameters, optimizer state and data
    position). Returns (model, history: one metrics dict per step, resumed steps included when
    logged). `on_step(step, metrics, get_model)` runs after every step on the host
    (`get_model()` merges the current parameters, e.g. for validation).
    Raises JSEError on a non-finite loss (naming the step; the last good checkpoint is kept) and
    `Preempted` after saving on SIGTERM.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh, devices)
    check_batch(cfg, mesh)
    if cfg.remat and hasattr(model, "remat"):
        model.remat = True
    shard_model(model, mesh)
    # LoRA: only the adapters are trained (and checkpointed); the base is frozen
    graphdef, params, frozen = split_trainable(model)
    tx = make_optimizer(cfg)
    sched = make_schedule(cfg)
    opt_state = init_opt_state(tx, params, mesh)
    ckpt = Checkpointer(out_dir, keep=cfg.keep_checkpoints, every=cfg.checkpoint_every,
                        model_config=getattr(model, "config", None))
    data_meta = batches.describe() if hasattr(batches, "describe") else {}
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        params, opt_state, saved = ckpt.restore(latest, params, opt_state)
        _check_data(saved, data_meta, out_dir)
        start = int(saved.get("step", latest))
        log.info("resumed from step %d in %s", start, out_dir)
    train_step = jit_train_step(make_train_step(graphdef, loss_fn, tx, accum=cfg.grad_accum),
                                params, frozen, opt_state, mesh)

    def step_fn(p, o, b):
        return train_step(p, frozen, o, b)

    def merged(p):
        return nnx.merge(graphdef, p, frozen)

    b_sh = batch_sharding(mesh)
    main = jax.process_index() == 0
    metrics_path = out_dir / "metrics.jsonl"
    history = []
    if metrics_path.exists():  # keep the logged history up to the resumed step
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        history = [h for h in history if h["step"] <= start]
    mf = open(metrics_path, "w") if main else None
    for h in history if main else ():
        mf.write(json.dumps(h) + "\n")
    tb = _tb_writer(out_dir / "tb") if main and cfg.tensorboard else None
    last_good = latest
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not progress or not main,
               dynamic_ncols=True)
    t0 = t_log = time.time()
    tokens_since = 0
    try:
        # traced under the mesh: activations are constrained to the batch axes (as `plan` assumes)
        with _SigTerm() as sig, jax.set_mesh(mesh):
            for step in range(start, cfg.steps):
                batch = batches.batch(step)
                if jax.process_count() > 1:  # each host holds its slice of the global batch
                    batch = {k: jax.make_array_from_process_local_data(b_sh, v)
                             for k, v in batch.items()}
                params, opt_state, m = step_fn(params, opt_state, batch)
                loss = float(m["loss"])
                done = step + 1
                if not math.isfinite(loss):
                    ckpt.wait()
                    raise JSEError(f"loss is {loss} at step {done}: training stopped; the last "
                                   f"good checkpoint (step {last_good}) is kept in {out_dir}")
                tokens_since += cfg.batch_size * int(batch["tokens"].shape[1])
                rec = {"step": done, **{k: float(v) for k, v in m.items()},
                       "lr": float(sched(step)), "elapsed_s": round(time.time() - t0, 2)}
                if done % cfg.log_every == 0 or done == cfg.steps:
                    now = time.time()
                    rec["tokens_per_s"] = round(tokens_since / max(now - t_log, 1e-9), 1)
                    t_log, tokens_since = now, 0
                    if mf is not None:
                        mf.write(json.dumps(rec) + "\n")
                        mf.flush()
                    if tb is not None:
                        for k, v in rec.items():
                            if k != "step":
                                tb.add_scalar(f"train/{k}", v, done)
                history.append(rec)
                stop = sig.flag or ckpt.reached_preemption(done)
                data = {**data_meta, "step": done}
                if ckpt.save(done, params, opt_state, data, force=(done == cfg.steps or stop)):
                    last_good = done
                if on_step is not None:
                    on_step(done, rec, lambda p=params: merged(p))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if stop:
                    ckpt.wait()
                    raise Preempted(f"SIGTERM: saved a checkpoint at step {done} in {out_dir} and "
                                    "stopped; run the same command again to resume")
    finally:
        bar.close()
        if mf is not None:
            mf.close()
        if tb is not None:
            tb.close()
        ckpt.close()
    nnx.update(model, params)
    return model, history
