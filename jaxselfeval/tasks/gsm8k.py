"""GSM8K through a TFDS builder (array_record files, read with `tfds.data_source`, no TensorFlow).

The raw files are `train.jsonl` / `test.jsonl` ({"question", "answer"} per line) in a directory:
`data_dir=` argument, else $JSE_GSM8K_DIR, else `../shared/data/gsm8k` beside the repository.
"validation" is the last 500 problems of train (train then holds the rest).
"""

from __future__ import annotations

import functools
import json
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
    raise JSEError("GSM8K files not found: set JSE_GSM8K_DIR to a directory holding train.jsonl "
                   "and test.jsonl")


@functools.lru_cache(maxsize=None)  # tfds registers the class by name: define it once
def _builder_cls():
    import tensorflow_datasets as tfds

    class JseGsm8k(tfds.core.GeneratorBasedBuilder):
        """GSM8K grade-school math (MIT), from local jsonl files."""

        VERSION = tfds.core.Version("1.0.0")
        name = "jse_gsm8k"

        def __init__(self, *, raw: Path, **kw):
            self._raw = Path(raw)
            super().__init__(**kw)

        def _info(self):
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "question": tfds.features.Text(),
                "answer": tfds.features.Text(), "final": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(self._raw / f"{s}.jsonl") for s in ("train", "test")}

        def _generate_examples(self, path):
            with open(path) as f:
                for i, line in enumerate(f):
                    d = json.loads(line)
                    final = d["answer"].rsplit("####", 1)[1].strip()
                    yield f"{path.stem}-{i}", {"id": f"{path.stem}-{i}", "question": d["question"],
                                               "answer": d["answer"], "final": final}

    return JseGsm8k


def build(raw: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None):
    """Prepare (once) and return the TFDS builder; files are array_record under data_dir."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets"))
    b = _builder_cls()(raw=raw_dir(raw), data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare()
    return b


class GSM8KTask(Task):
    name = "gsm8k"

    def __init__(self, raw_dir: str | None = None, data_dir: str | None = None):
        self._raw, self._data_dir = raw_dir, data_dir
        self._rows: dict[str, list[Example]] = {}

    def _load(self, split: str) -> list[Example]:
        b = build(self._raw, self._data_dir)
        src = b.as_data_source(split=split)  # random-access array_record reader, no TensorFlow
        out = []
        for r in src:
            txt = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in r.items()}
            out.append(Example(txt["id"], txt["question"], txt["answer"],
                               canonical_number(txt["final"]) or "", 0))
        return out

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        base = "test" if split == "test" else "train"
        if base not in self._rows:
            self._rows[base] = sorted(self._load(base), key=lambda e: int(e.id.split("-")[1]))
        rows = self._rows[base]
        if split == "train":
            return rows[:-N_VALIDATION]
        if split == "validation":
            return rows[-N_VALIDATION:]
        return rows
