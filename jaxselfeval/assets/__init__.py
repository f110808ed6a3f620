"""Files shipped with the package: the trained tiny base model (HF layout)."""

from pathlib import Path

from jaxselfeval.errors import JSEError

ASSETS = Path(__file__).resolve().parent


def default_model_dir() -> Path:
    d = ASSETS / "tiny_base"
    if not (d / "config.json").exists():
        raise JSEError(f"the shipped tiny model is missing from {d}: reinstall, or train it with "
                       "`jaxselfeval train base`")
    return d
