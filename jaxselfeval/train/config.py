"""Training configuration: YAML in configs/ + `key=value` overrides, validated."""

from __future__ import annotations

import dataclasses

from jaxselfeval.errors import JSEError, closest


@dataclasses.dataclass
class TrainConfig:
    model_config: str = "tiny"  # configs/models/NAME.yaml, for training from scratch
    model: dict = dataclasses.field(default_factory=dict)  # overrides of its fields
    init_from: str | None = None  # HF directory to start from instead
    task: str = "arithmetic"
    task_args: dict = dataclasses.field(default_factory=dict)
    tokenizer_vocab: int = 512
    seq_len: int = 192
    batch_size: int = 32  # global, per optimizer step
    grad_accum: int = 1
    steps: int = 2000
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    b2: float = 0.95
    seed: int = 0
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    remat: bool = False
    mesh: str = "data=-1"
    out_dir: str = "runs/train"
    export_dir: str | None = None  # HF directory written at the end (default out_dir/hf)
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 20
    eval_problems: int = 300
    eval_samples: int = 16
    max_new_tokens: int = 96

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise JSEError(f"unknown config key '{k}'{closest(k, names)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self):
        if self.batch_size % self.grad_accum:
            raise JSEError(f"batch_size {self.batch_size} is not divisible by grad_accum "
                           f"{self.grad_accum}")
        for k in ("steps", "seq_len", "batch_size", "checkpoint_every"):
            if getattr(self, k) < 1:
                raise JSEError(f"{k} must be >= 1")


def load_train_config(path, overrides=None) -> TrainConfig:
    from jaxselfeval.configs import apply_overrides, find_config, load_yaml

    d = load_yaml(find_config(path))
    base = dataclasses.asdict(TrainConfig())
    base.update(d)
    for k in d:
        if k not in dataclasses.asdict(TrainConfig()):
            raise JSEError(f"unknown config key '{k}'{closest(k, list(base))}")
    return TrainConfig.from_dict(apply_overrides(base, overrides))
