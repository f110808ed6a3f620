"""YAML configs in configs/ with `key=value` overrides (dotted keys for nested sections),
decoded into the commands' config dataclasses by draccus.

Why draccus (against OmegaConf structured configs and ml_collections): it decodes a plain dict
straight into the dataclasses the code already passes around, with their own types kept (tuples
stay tuples for jit's static arguments, `X | None` unions, nested sections) and their own
`__post_init__` checks run; there is no second config object to carry (OmegaConf's DictConfig,
ml_collections' ConfigDict with absl flags); and Levanter, which our users know, configures
with it. The `key=value` command line and its "closest valid key" errors are ours
(`apply_overrides`, `check_keys`): draccus' own command line is `--key value` flags."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import draccus
import yaml
from draccus.utils import DecodingError

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


def _section(hint):
    """The dataclass or mapping type a field's hint names (`X | None` -> X), else None."""
    for a in (hint, *typing.get_args(hint)):
        a = typing.get_origin(a) or a
        if a is dict or dataclasses.is_dataclass(a):
            return a
    return None


def _keys(schema) -> dict | None:
    """{key: its section type or None} of a dataclass schema; None for a free mapping (`dict`),
    whose keys are checked where they are used (task_args by the task, ...)."""
    if not dataclasses.is_dataclass(schema):
        return None
    return {k: _section(h) for k, h in typing.get_type_hints(schema).items()}


def apply_overrides(cfg: dict, overrides: list[str] | None, schema=None) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict; unknown keys named with
    the closest valid one.

    schema: the config dataclass the dict is for. Its fields are the valid keys at each level,
    nested dataclasses are sections (created from nothing when unset: `lora.rank=16`), and
    `dict` fields free mappings (`task_args.max_steps=3` may add a key). Without one, the keys
    the dict holds are the valid ones."""
    cfg = dict(cfg)
    for ov in overrides or []:
        if "=" not in ov:
            raise JSEError(f"override '{ov}' must be key=value")
        key, val = ov.split("=", 1)
        parts = key.split(".")
        node, kind = cfg, schema
        for i, k in enumerate(parts):
            if not isinstance(node, dict):
                parent = ".".join(parts[:i])
                raise JSEError(f"config key '{parent}' is not a section: set {parent}=VALUE")
            valid = _keys(kind) if kind is not None else node
            if valid is not None and k not in valid:
                raise JSEError(f"unknown config key '{'.'.join(parts[:i + 1])}'"
                               f"{closest(k, list(valid))}")
            if i == len(parts) - 1:
                node[k] = yaml.safe_load(val)
            else:
                kind = valid.get(k) if isinstance(valid, dict) and kind is not None else None
                if node.get(k) is None and kind is not None:
                    node[k] = {}
                if isinstance(node.get(k), dict):
                    node[k] = dict(node[k])  # copy: the caller's sections stay as they were
                node = node.get(k)
    return cfg


def parse_task_args(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings (values parsed as YAML) -> the task's keyword arguments (checked by
    `get_task`)."""
    return apply_overrides({}, pairs, schema=dict)


def check_keys(cls, d: dict, where: str = ""):
    """Every key of `d` (nested dicts too) a field of dataclass `cls` (and of its nested
    dataclass sections), or a JSEError naming the closest valid one."""
    keys = _keys(cls)
    for k, v in d.items():
        if k not in keys:
            raise JSEError(f"unknown config key '{where}{k}'{closest(k, list(keys))}")
        if isinstance(v, dict) and keys[k] is not None and keys[k] is not dict:
            check_keys(keys[k], v, f"{where}{k}.")


def decode_config(cls, d: dict):
    """`cls` from a nested dict of its fields, decoded by draccus (Levanter's config library):
    each value converted to its field's declared type (`lr: 3e-4` a float, a list a tuple, a
    section its nested dataclass), unknown keys named with the closest valid one, and the
    dataclasses' own checks (`__post_init__`) run, every error one line."""
    check_keys(cls, d)
    try:
        return draccus.decode(cls, d)
    except DecodingError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        key, _, msg = lines[0].partition(": ")
        why = lines[-1].split(": ", 1)[-1] if len(lines) > 1 else msg  # a union's own reason
        raise JSEError(f"config key '{key.strip('`')}': {why}") from None


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
    """`cls` from its defaults, then `defaults`, then the YAML file at `path` (a path or
    configs/NAME), then `key=value` overrides (dotted keys for sections), decoded by
    `decode_config`. A nested section the file sets replaces only the keys it names; a free
    mapping (task_args, splits) is replaced whole."""
    base = _merge(dataclasses.asdict(cls()), defaults or {}, cls)
    if path is not None:
        d = load_yaml(find_config(path))
        try:
            check_keys(cls, d)
        except JSEError as e:
            raise JSEError(f"{e} in {path}") from None
        base = _merge(base, d, cls)
    return decode_config(cls, apply_overrides(base, overrides, schema=cls))


def _merge(base: dict, top: dict, cls) -> dict:
    """`top` over `base` for dataclass `cls`: a nested dataclass section merges key by key; any
    other value, a free mapping included, replaces."""
    out, keys = dict(base), _keys(cls)
    for k, v in top.items():
        sec = keys.get(k)
        out[k] = (_merge(out[k], v, sec) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  and sec is not None and sec is not dict else v)
    return out


def load_model_config(name: str | os.PathLike, overrides: list[str] | None = None) -> LlamaConfig:
    """A model-shape config from configs/models/ (e.g. 'llama3_1_8b')."""
    d = apply_overrides(load_yaml(find_config(name, "models")), overrides)
    return LlamaConfig.from_dict(d)
