"""YAML configs in configs/ with `key=value` overrides (dotted keys for nested sections)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from jaxselfeval.errors import JSEError, closest
from jaxselfeval.model.config import LlamaConfig

CONFIG_DIR = Path(os.environ.get("JSE_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))


def find_config(name: str | os.PathLike, kind: str = "") -> Path:
    """A path, or a name looked up in configs/<kind>/ (with or without .yaml)."""
    p = Path(name)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / kind / f"{name}.yaml", CONFIG_DIR / kind / str(name),
                 CONFIG_DIR / f"{name}.yaml"):
        if cand.exists():
            return cand
    avail = sorted(q.stem for q in (CONFIG_DIR / kind).glob("*.yaml")) if (CONFIG_DIR / kind).exists() else []
    raise JSEError(f"config '{name}' not found{closest(str(name), avail)}: "
                   f"give a YAML path or one of {', '.join(avail) or '(none)'}")


def load_yaml(path: str | os.PathLike) -> dict:
    try:
        d = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise JSEError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise JSEError(f"{path} must hold a mapping of key: value")
    return d


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML); unknown keys named with a suggestion."""
    cfg = dict(cfg)
    for ov in overrides or []:
        if "=" not in ov:
            raise JSEError(f"override '{ov}' must be key=value")
        key, val = ov.split("=", 1)
        parts = key.split(".")
        node = cfg
        for i, k in enumerate(parts):
            if k not in node:
                raise JSEError(f"unknown config key '{'.'.join(parts[:i + 1])}'{closest(k, node)}")
            if i == len(parts) - 1:
                node[k] = yaml.safe_load(val)
            else:
                node[k] = dict(node[k])
                node = node[k]
    return cfg


def load_model_config(name: str | os.PathLike, overrides: list[str] | None = None) -> LlamaConfig:
    """A model-shape config from configs/models/ (e.g. 'llama3_1_8b')."""
    d = apply_overrides(load_yaml(find_config(name, "models")), overrides)
    return LlamaConfig.from_dict(d)
