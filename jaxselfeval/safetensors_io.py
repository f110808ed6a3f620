"""Streamed safetensors writing: tensors fetched one at a time (arrays or `_Lazy`), so an export
never holds every weight on the host at once. Shared by the HF and GGUF converters."""

from __future__ import annotations

import json
import math

import numpy as np

_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "int32": "I32"}


class _Lazy:
    """A tensor written later: shape, numpy dtype, and `get()` -> the array (host)."""

    def __init__(self, shape, dtype, fn):
        self.shape, self.dtype, self.fn = tuple(shape), np.dtype(dtype), fn

    def get(self) -> np.ndarray:
        a = np.ascontiguousarray(np.asarray(self.fn()).astype(self.dtype))
        if a.shape != self.shape:
            raise ValueError(f"tensor has shape {a.shape}, expected {self.shape}")
        return a


def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
    """`safetensors.numpy.save_file`, streamed: values are arrays or `_Lazy`, fetched one at a
    time in file order (sorted names, as safetensors writes them) and written straight to disk,
    so one tensor is on the host at a time. Same bytes as safetensors' own writer."""
    items = sorted((k, v if isinstance(v, _Lazy) else _Lazy(v.shape, v.dtype, lambda v=v: v))
                   for k, v in tensors.items())
    header, off = ({"__metadata__": metadata} if metadata else {}), 0
    for name, t in items:
        n = math.prod(t.shape) * t.dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[t.dtype.name], "shape": list(t.shape),
                        "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(filename, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for _name, t in items:
            f.write(t.get().reshape(-1).view(np.uint8).data)


