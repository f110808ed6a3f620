"""Training: optax + orbax + jit-sharded steps over a (data, fsdp, tensor) mesh."""

from jaxselfeval.train.config import TrainConfig, load_train_config
from jaxselfeval.train.loop import run_training
from jaxselfeval.train.losses import lm_loss

__all__ = ["TrainConfig", "load_train_config", "run_training", "lm_loss"]
