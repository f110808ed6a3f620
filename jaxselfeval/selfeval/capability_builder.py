"""The capability dataset as TFDS array_record files: a builder over the JSONL shards
(`selfeval.dataset` writes them atomically), prepared once the shards are complete and read back
with random access (no TensorFlow at read time)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxselfeval.errors import JSEError


class JseCapability(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Capability-token training rows (prompt, response or its prefix, target). Built from its
    class, never looked up by name: not registered (a re-imported module defines it again)."""

    VERSION = tfds.core.Version("1.0.0")
    name = "jse_capability"

    def __init__(self, *, shards, **kw):
        self._shards = Path(shards)
        super().__init__(**kw)

    def _info(self):
        ids = tfds.features.Sequence(np.int32)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "example": tfds.features.Text(), "prompt_ids": ids,
            "response_ids": ids, "truncation": np.int32, "target": np.float32,
            "reward": np.float32, "difficulty": np.int32}))

    def _split_generators(self, dl_manager):
        splits = sorted({p.name.split("-")[0] for p in self._shards.glob("*.jsonl")})
        return {s: self._generate_examples(sorted(self._shards.glob(f"{s}-*.jsonl")))
                for s in splits}

    def _generate_examples(self, files):
        for f in files:
            for line in f.read_text().splitlines():
                r = json.loads(line)
                yield r["id"], r


def builder(out: Path) -> JseCapability:
    """The builder of the dataset in `out` (shards in out/shards, array_record in out/tfds)."""
    return JseCapability(shards=str(out / "shards"), data_dir=str(out / "tfds"),
                         file_format="array_record")


def write_tfds(out: Path, *, progress: bool = True):
    """(Re)write the array_record dataset from the shards (out/tfds is this module's own)."""
    if not progress:
        tfds.disable_progress_bar()
    tf_dir = Path(out) / "tfds"
    if tf_dir.exists():
        shutil.rmtree(tf_dir)
    builder(Path(out)).download_and_prepare()


def load_rows(out_dir, split: str) -> list[dict]:
    """Rows of one split from the array_record files (random access, no TensorFlow)."""
    b = builder(Path(out_dir))
    if split not in b.info.splits:
        raise JSEError(f"split '{split}' not in the dataset at {out_dir}: built splits are "
                       f"{', '.join(b.info.splits)}")
    rows = []
    for r in b.as_data_source(split=split):
        r = dict(r)
        for k in ("id", "example"):
            r[k] = r[k].decode() if isinstance(r[k], bytes) else r[k]
        rows.append(r)
    return rows
