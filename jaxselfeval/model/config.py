"""Llama model configuration: our dataclass, and the mapping to/from HF `config.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxselfeval.errors import JSEError, closest

ROPE_TYPES = ("default", "llama3", "linear")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes and hyper-parameters of a Llama 3.x model (mirrors HF `LlamaConfig`)."""

    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None  # defaults to hidden_size // num_attention_heads
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_type: str = "default"  # default | llama3 | linear
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 128000
    eos_token_id: int | list[int] | None = 128009
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self.validate()

    def validate(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise JSEError(
                f"unsupported rope_type '{self.rope_type}': supported are {', '.join(ROPE_TYPES)}"
            )
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim"):
            if int(getattr(self, f)) <= 0:
                raise JSEError(f"config {f} must be a positive integer, got {getattr(self, f)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise JSEError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else (tuple(e) if isinstance(e, tuple) else (int(e),))

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- HF mapping
    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        """Map an HF `config.json` dict (Llama 3.1 `rope_scaling` or transformers-5 `rope_parameters`)."""
        mt = d.get("model_type", "llama")
        if mt != "llama":
            raise JSEError(f"unsupported model_type '{mt}': only 'llama' checkpoints are supported")
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise JSEError(f"unsupported config: {flag}=true (Llama 3 has no biases)")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise JSEError(f"unsupported hidden_act '{act}': Llama uses 'silu'")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope = dict(rope)
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rtype = rope.get("rope_type", rope.get("type", "default"))
        kw = dict(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim"),
            max_position_embeddings=d.get("max_position_embeddings", 8192),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_type=rtype,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", 8192)
            ),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        return cls(**kw)

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict:
        """An HF `config.json` dict that transformers 5 `LlamaForCausalLM` loads."""
        rope = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "llama3":
            rope.update(
                factor=self.rope_factor,
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
            )
        elif self.rope_type == "linear":
            rope.update(factor=self.rope_factor)
        eos = self.eos_token_id
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "pad_token_id": self.pad_token_id,
            "dtype": torch_dtype,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """From our own field names (configs/*.yaml `model:` section), unknown keys named."""
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in names:
                raise JSEError(f"unknown model config key '{k}'{closest(k, names)}")
        return cls(**d)


def read_hf_config(path: str | Path) -> LlamaConfig:
    p = Path(path) / "config.json"
    if not p.exists():
        raise JSEError(f"no config.json in '{path}': point at an HF model directory")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise JSEError(f"{p} is not valid JSON ({e})") from None
    try:
        return LlamaConfig.from_hf_dict(d)
    except KeyError as e:
        raise JSEError(f"{p} lacks required key {e}") from None
