"""GSM8K through the `jse_gsm8k` TFDS builder (array_record files, read with `tfds.data_source`;
no TensorFlow). See tasks/gsm8k_builder.py for the build/read recipe.

The raw files are `train.jsonl` / `test.jsonl` ({"question", "answer"} per line) in a directory:
the `raw_dir=` argument, else $JSE_GSM8K_DIR, else `../shared/data/gsm8k` beside the repository.
"validation" is the last 500 problems of the file's train split (a tenth if it has under 5000);
"train" holds the rest, so they never overlap. Rows keep the files' order.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxselfeval.errors import JSEError
from jaxselfeval.tasks.base import Example, Task, canonical_number

N_VALIDATION = 500


def raw_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory with train.jsonl/test.jsonl: `path`, else $JSE_GSM8K_DIR, else shared/."""
    for given, what in ((path, "the given directory"), (os.environ.get("JSE_GSM8K_DIR"), "$JSE_GSM8K_DIR")):
        if given:
            if not (Path(given) / "test.jsonl").exists():
                raise JSEError(f"no GSM8K test.jsonl in '{given}' ({what}): point it at a directory "
                               "holding train.jsonl and test.jsonl")
            return Path(given)
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"
    if (default / "test.jsonl").exists():
        return default
    raise JSEError(f"GSM8K files not found (no $JSE_GSM8K_DIR, nothing in '{default}'): put "
                   "train.jsonl and test.jsonl from github.com/openai/grade-school-math "
                   "(grade_school_math/data/) in a directory and set JSE_GSM8K_DIR to it")


def build(raw: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None):
    """Prepare (once per data_dir) and return the `jse_gsm8k` TFDS builder (array_record files).

    data_dir: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. A prepared data_dir is
    reused as is; if its row counts no longer match the raw files, this raises (use a fresh one).
    """
    import tensorflow_datasets as tfds

    from jaxselfeval.tasks.gsm8k_builder import SPLIT_FILES, JseGsm8k

    src = raw_dir(raw)
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
    b = JseGsm8k(data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(src)))
    for split, fname in SPLIT_FILES.items():
        with open(src / fname, encoding="utf-8") as f:
            n = sum(1 for line in f if line.strip())
        if b.info.splits[split].num_examples != n:
            raise JSEError(f"the GSM8K dataset in '{b.data_dir}' has {b.info.splits[split].num_examples}"
                           f" {split} rows but '{src / fname}' has {n}: delete it or use another "
                           "data_dir")
    return b


class GSM8KTask(Task):
    """GSM8K: train / validation (last N_VALIDATION of train) / test; difficulty = the number of
    solution lines before '####' (the reasoning steps)."""

    name = "gsm8k"

    def __init__(self, raw_dir: str | None = None, data_dir: str | None = None):
        self._raw, self._data_dir = raw_dir, data_dir
        self._rows: dict[str, list[Example]] = {}

    def _load(self, split: str) -> list[Example]:
        b = build(self._raw, self._data_dir)
        src = b.as_data_source(split=split)  # == tfds.data_source(...): array_record, no TensorFlow
        out = []
        for r in src:
            txt = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in r.items()}
            steps = txt["answer"].rsplit("####", 1)[0].strip().count("\n") + 1
            out.append(Example(txt["id"], txt["question"], txt["answer"],
                               canonical_number(txt["final"]) or "", steps))
        return out

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        base = "test" if split == "test" else "train"
        if base not in self._rows:
            self._rows[base] = sorted(self._load(base), key=lambda e: int(e.id.split("-")[1]))
        rows = self._rows[base]
        n_val = min(N_VALIDATION, len(rows) // 10)
        if split == "train":
            return rows[:len(rows) - n_val]
        if split == "validation":
            return rows[len(rows) - n_val:]
        return rows
