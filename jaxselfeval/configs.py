"""YAML configs in configs/ with `key=value` overrides (dotted keys for nested sections)."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
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


def apply_overrides(cfg: dict, overrides: list[str] | None, open_keys=()) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML); unknown keys named with a suggestion.

    open_keys: top-level keys holding free-form mappings (task_args, lora, prompt_files, ...)
    whose own keys are checked where they are used: `task_args.max_steps=3` may add a key the
    file did not set, and a null section becomes a mapping."""
    cfg = dict(cfg)
    for ov in overrides or []:
        if "=" not in ov:
            raise JSEError(f"override '{ov}' must be key=value")
        key, val = ov.split("=", 1)
        parts = key.split(".")
        node = cfg
        for i, k in enumerate(parts):
            if not isinstance(node, dict):
                parent = ".".join(parts[:i])
                raise JSEError(f"config key '{parent}' is not a section: set {parent}=VALUE")
            if k not in node and not (i == 1 == len(parts) - 1 and parts[0] in open_keys):
                raise JSEError(f"unknown config key '{'.'.join(parts[:i + 1])}'{closest(k, node)}")
            if i == len(parts) - 1:
                node[k] = yaml.safe_load(val)
            else:
                if node[k] is None and i == 0 and k in open_keys:
                    node[k] = {}
                if isinstance(node[k], dict):
                    node[k] = dict(node[k])  # copy: the caller's sections stay as they were
                node = node[k]
    return cfg


def parse_task_args(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings (values parsed as YAML) -> the task's keyword arguments (checked by
    `get_task`)."""
    return apply_overrides({"task_args": {}}, [f"task_args.{p}" for p in pairs],
                           open_keys=("task_args",))["task_args"]


def mapping_fields(cls) -> tuple[str, ...]:
    """The fields of dataclass `cls` declared as mappings (`dict`, `dict[str, int]`,
    `dict | None`)."""
    return tuple(k for k, hint in typing.get_type_hints(cls).items()
                 if dict in {typing.get_origin(a) or a for a in (hint, *typing.get_args(hint))})


def _coerce(key: str, val, hint):
    """val converted to the field's declared type where YAML parsed it as another (e.g. `3e-4`
    is a string in YAML 1.1, `[1, 2]` a list for a tuple field)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if val is None and type(None) in typing.get_args(hint):
        return None
    base = typing.get_origin(hint) or hint
    if base in (typing.Union, types.UnionType) and len(args) == 1:
        return _coerce(key, val, args[0])
    try:
        if base is float and not isinstance(val, bool):
            return float(val)
        if base is int and not isinstance(val, bool):
            if isinstance(val, float) and not val.is_integer():
                raise ValueError
            return int(val)
        if base is bool and isinstance(val, bool):
            return val
        if base is bool:
            raise ValueError
        if base is tuple and isinstance(val, (list, tuple)):
            return tuple(val)
    except (TypeError, ValueError):
        want = {float: "a number", int: "an integer", bool: "true or false"}.get(base, str(base))
        raise JSEError(f"config key '{key}' must be {want}, got {val!r}") from None
    return val


def describe_defaults(cls) -> str:
    """"key=default, ..." of a config dataclass, for --help (default factories called)."""
    def value(f):
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return "(required)"

    return ", ".join(f"{f.name}={value(f)}" for f in dataclasses.fields(cls))


def load_dataclass_config(cls, path=None, overrides: list[str] | None = None, *,
                          defaults: dict | None = None):
    """`cls(**values)` from its defaults, then `defaults`, then the YAML file at `path` (a path or
    configs/NAME), then `key=value` overrides. Unknown keys are named with the closest valid one;
    values are converted to the fields' declared types (`lr=3e-4` is a float)."""
    base = {**dataclasses.asdict(cls()), **(defaults or {})}
    if path is not None:
        d = load_yaml(find_config(path))
        for k in d:
            if k not in base:
                raise JSEError(f"unknown config key '{k}' in {path}{closest(k, list(base))}")
        base.update(d)
    return cls(**coerce_fields(cls, apply_overrides(base, overrides, mapping_fields(cls))))


def coerce_fields(cls, d: dict) -> dict:
    """`d` with each value converted to the declared type of `cls`'s field of that name."""
    hints = typing.get_type_hints(cls)
    return {k: _coerce(k, v, hints.get(k, typing.Any)) for k, v in d.items()}


def load_model_config(name: str | os.PathLike, overrides: list[str] | None = None) -> LlamaConfig:
    """A model-shape config from configs/models/ (e.g. 'llama3_1_8b')."""
    d = apply_overrides(load_yaml(find_config(name, "models")), overrides)
    return LlamaConfig.from_dict(d)
