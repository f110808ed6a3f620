"""Training: optax + orbax + jit-sharded steps over a (data, fsdp, tensor) mesh.

    cfg = load_train_config("configs/train_tiny.yaml", ["steps=200"])
    model, history = run_training(model, Batches(tokens, mask, cfg.batch_size, cfg.seed),
                                  lm_loss, cfg, out_dir="runs/x")

A loss is `loss_fn(model, batch) -> (scalar loss, metrics dict)` (see `losses.py`).
"""

from jaxselfeval.train.config import TrainConfig, load_train_config
from jaxselfeval.train.data import Batches, encode_sft
from jaxselfeval.train.loop import Preempted, run_training
from jaxselfeval.train.losses import lm_loss

__all__ = ["TrainConfig", "load_train_config", "Batches", "encode_sft", "Preempted",
           "run_training", "lm_loss"]
