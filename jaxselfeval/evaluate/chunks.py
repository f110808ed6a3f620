"""Per-chunk evaluation results on disk: a killed `eval` resumes, and hosts split the chunks.

Each chunk of prompts (`batch_prompts` of them) is written atomically to
`<out>/chunks/chunk-<first prompt>.json` once every strategy has run on it. `meta.json` holds a
fingerprint of the settings and the model, so results of another evaluation are never mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.evaluate.records import PromptRecord
from jaxselfeval.fileio import write_atomic


# What a chunk holds; bump it when the harness adds a strategy or sweep, so chunks written by an
# older jaxselfeval (which lack it) are refused instead of merged into partial figures.
FORMAT = 5


def fingerprint(cfg, model, n_examples: int, with_rm: bool) -> str:
    """sha256 of the chunk format, the eval settings (less `goals`, which only mark the report),
    the number of problems, whether an RM baseline runs, and the model (`fingerprint_of`)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "goals"}
    return fingerprint_of([FORMAT, settings, n_examples, with_rm], model)


def fingerprint_of(settings: list, model) -> str:
    """sha256 of JSON-able `settings`, the model's configuration, its weight and compute dtypes
    (a bf16 checkpoint loaded in f32 or bf16 has the same values but samples differently) and
    the first values of every parameter (enough to tell two models apart)."""
    import jax
    from flax import nnx

    dtypes = [str(model.param_dtype), str(model.compute_dtype)]
    h = hashlib.sha256(json.dumps(list(settings) + [dataclasses.asdict(model.config), dtypes],
                                  sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        h.update(np.asarray(leaf.reshape(-1)[:64], np.float32).tobytes())
    return h.hexdigest()


class ChunkStore:
    """The chunks of one evaluation (or of another resumable job: `what`) under `directory`
    (shared by every host)."""

    def __init__(self, directory, key: str, *, writer: bool = True, what: str = "evaluation"):
        self.dir = Path(directory)
        meta = self.dir / "meta.json"
        if meta.exists():
            if json.loads(meta.read_text()).get("fingerprint") != key:
                raise JSEError(f"{self.dir} holds chunks of another {what} (other settings, "
                               f"model or jaxselfeval version): remove that directory or pick another --out")
        elif writer:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(meta, json.dumps({"fingerprint": key}))

    def path(self, start: int) -> Path:
        return self.dir / f"chunk-{start:06d}.json"

    def has(self, start: int) -> bool:
        return self.path(start).exists()

    def write(self, start: int, part: dict):
        write_atomic(self.path(start), json.dumps(encode(part)))

    def read(self, start: int) -> dict:
        return decode(json.loads(self.path(start).read_text()))

    def write_rows(self, start: int, rows: list[dict]):
        """A chunk of plain JSON rows (e.g. `generate`'s output lines)."""
        write_atomic(self.path(start), json.dumps(rows))

    def read_rows(self, start: int) -> list[dict]:
        return json.loads(self.path(start).read_text())


def encode(part: dict) -> dict:
    """JSON form of one chunk: {recs: {name: [records]}, sweeps: {kind: {key: [records]}},
    wall: {name: s}, pooled: {name: [P, n] lists}}."""
    return {"recs": {k: [dataclasses.asdict(r) for r in v] for k, v in part["recs"].items()},
            "sweeps": {kind: {str(k): [dataclasses.asdict(r) for r in v] for k, v in d.items()}
                       for kind, d in part["sweeps"].items()},
            "wall": part["wall"],
            "pooled": {k: np.asarray(v).tolist() for k, v in part["pooled"].items()}}


def decode(d: dict) -> dict:
    """Inverse of `encode`: records back as PromptRecords, sweep keys as the harness makes them
    (threshold, threshold_pruned: float, bon: int, prune: "at:fraction"; each signal's sweeps
    the same: threshold_likelihood, prune_combined), pooled arrays as numpy."""
    kinds = {"threshold": float, "bon": int, "prune": str}
    return {"recs": {k: [PromptRecord(**r) for r in v] for k, v in d["recs"].items()},
            "sweeps": {kind: {kinds[kind.split("_")[0]](k): [PromptRecord(**r) for r in v] for k, v in s.items()}
                       for kind, s in d["sweeps"].items()},
            "wall": d["wall"],
            "pooled": {k: np.asarray(v, np.float64) for k, v in d["pooled"].items()}}


def merge(parts: list[dict]) -> dict:
    """Chunks in prompt order -> one part (records concatenated, wall times summed)."""
    out: dict = {"recs": {}, "sweeps": {}, "wall": {}, "pooled": {}}
    for p in parts:
        for k, v in p["recs"].items():
            out["recs"].setdefault(k, []).extend(v)
        for kind, d in p["sweeps"].items():
            for k, v in d.items():
                out["sweeps"].setdefault(kind, {}).setdefault(k, []).extend(v)
        for k, v in p["wall"].items():
            out["wall"][k] = out["wall"].get(k, 0.0) + v
        for k, v in p["pooled"].items():
            out["pooled"].setdefault(k, []).append(v)
    out["pooled"] = {k: np.concatenate(v) for k, v in out["pooled"].items()}
    return out
