"""Training configuration: YAML in configs/ + `key=value` overrides, validated.

    cfg = load_train_config("configs/train_tiny.yaml", ["steps=200", "model.num_hidden_layers=2"])

An unknown key (top level, or under `model.`) is a JSEError naming the closest valid key.
"""

from __future__ import annotations

import dataclasses

from jaxselfeval.errors import JSEError, closest


@dataclasses.dataclass
class TrainConfig:
    model_config: str = "tiny"  # configs/models/NAME.yaml, for training from scratch
    # `train base` from an HF directory's weights and tokenizer instead of from scratch (a second
    # stage: fine-tuning a pretrained base on another data mix); model_config is then unused
    init_from: str | None = None
    model: dict = dataclasses.field(default_factory=dict)  # overrides of its LlamaConfig fields
    task: str = "arithmetic"
    task_args: dict = dataclasses.field(default_factory=dict)
    tokenizer_vocab: int = 512
    # extra "check the working" documents mixed into `train base`, as a share of the training
    # examples (tasks with `checking_documents`: arithmetic): the model learns to mark a wrong line
    checking_fraction: float = 0.0
    # `train base`: also train the LM loss after this layer (an early exit; 0: off), weighted
    exit_layer: int = 0
    exit_weight: float = 1.0
    seq_len: int = 192  # padded length; longer examples are dropped (counted in the log)
    batch_size: int = 32  # global, per optimizer step
    grad_accum: int = 1  # micro-batches per step (batch_size / grad_accum each)
    steps: int = 2000
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    b2: float = 0.95
    seed: int = 0  # model init and data order
    param_dtype: str = "float32"  # master weights
    compute_dtype: str = "bfloat16"  # matmul inputs (accumulation is always float32)
    remat: bool = False  # jax.checkpoint per layer (less memory; on CPU often faster too)
    mesh: str = "data=-1"
    out_dir: str = "runs/train"
    export_dir: str | None = None  # HF directory written at the end (default out_dir/hf)
    export_dtype: str | None = None  # dtype of the exported weights (default param_dtype)
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 20
    tensorboard: bool = True  # also write TensorBoard events when tensorboardX/tensorboard is installed
    eval_split: str = "test"
    eval_problems: int = 300  # held-out problems for the final sample@1 / pass@N (0: skip)
    eval_samples: int = 16
    max_new_tokens: int = 96

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        from jaxselfeval.configs import decode_config

        cfg = decode_config(cls, d)
        cfg.validate()
        return cfg

    def validate(self):
        from jaxselfeval.model.config import LlamaConfig
        from jaxselfeval.model.llama import DTYPES
        from jaxselfeval.sharding import parse_mesh

        fields = [f.name for f in dataclasses.fields(LlamaConfig)]
        for k in self.model:
            if k not in fields:
                raise JSEError(f"unknown config key 'model.{k}'{closest(k, fields)}: model "
                               "overrides are LlamaConfig fields")
        if self.batch_size % self.grad_accum:
            raise JSEError(f"batch_size {self.batch_size} is not divisible by grad_accum "
                           f"{self.grad_accum}: change one of them")
        for k in ("steps", "seq_len", "batch_size", "grad_accum", "checkpoint_every",
                  "keep_checkpoints", "log_every"):
            if getattr(self, k) < 1:
                raise JSEError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("param_dtype", "compute_dtype", "export_dtype"):
            v = getattr(self, k)
            if v is not None and v not in DTYPES:
                raise JSEError(f"{k} '{v}' is not a dtype: use one of {', '.join(DTYPES)}")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise JSEError(f"lr must be > 0 and warmup_steps >= 0 (got {self.lr}, {self.warmup_steps})")
        if not 0.0 <= self.checking_fraction <= 1.0:
            raise JSEError(f"checking_fraction must be in [0, 1], got {self.checking_fraction}")
        if self.exit_layer < 0 or self.exit_weight < 0:
            raise JSEError(f"exit_layer and exit_weight must be >= 0 (got {self.exit_layer}, "
                           f"{self.exit_weight})")
        parse_mesh(self.mesh)


def load_train_config(path, overrides=None) -> TrainConfig:
    """TrainConfig from a YAML file (or configs/NAME) plus `key=value` / `model.key=value`
    overrides (values parsed as YAML)."""
    from jaxselfeval.configs import load_dataclass_config

    cfg = load_dataclass_config(TrainConfig, path, overrides)  # model.X / task_args.X may add keys
    cfg.validate()
    return cfg
