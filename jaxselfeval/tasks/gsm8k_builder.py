"""TFDS builder `jse_gsm8k` (1.0.0): GSM8K from local `train.jsonl` / `test.jsonl` files.

Importing this module registers the builder with TFDS (it imports tensorflow_datasets, so
`jaxselfeval.tasks.gsm8k` imports it only when it builds). The raw files are TFDS's manual dir:

    import tensorflow_datasets as tfds
    from jaxselfeval.tasks import gsm8k_builder
    b = gsm8k_builder.JseGsm8k(data_dir=DATA_DIR, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=RAW_DIR))
    ds = tfds.data_source("jse_gsm8k", data_dir=DATA_DIR, split="test")  # random access
    ds[0]["question"]  # bytes

No TensorFlow is needed for building or reading array_record files (tensorflow is not installed
in this project's environment). Features: id ("test-17"), question, answer (the full solution
text, ending "#### <number>"), final (the text after the last "####").
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow_datasets as tfds

from jaxselfeval.errors import JSEError

SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}


class JseGsm8k(tfds.core.GeneratorBasedBuilder):
    """GSM8K grade-school math word problems (MIT licence), from local jsonl files."""

    name = "jse_gsm8k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "GSM8K main (7473 train / 1319 test) from local jsonl files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put GSM8K's train.jsonl and test.jsonl (one {\"question\", \"answer\"} object a line) in "
        "the manual dir (DownloadConfig(manual_dir=...); jaxselfeval passes $JSE_GSM8K_DIR).")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "question": tfds.features.Text(),
                "answer": tfds.features.Text(), "final": tfds.features.Text()}),
            homepage="https://github.com/openai/grade-school-math")

    def _split_generators(self, dl_manager):
        raw = Path(dl_manager.manual_dir)
        return {s: self._generate_examples(raw / f, s) for s, f in SPLIT_FILES.items()}

    def _generate_examples(self, path: Path, split: str):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    final = d["answer"].rsplit("####", 1)[1].strip()
                    question = d["question"]
                except (ValueError, KeyError, IndexError, AttributeError):
                    raise JSEError(f"{path}:{i + 1}: not a GSM8K row (want JSON with 'question' "
                                   "and an 'answer' ending '#### <number>')") from None
                key = f"{split}-{i}"
                yield key, {"id": key, "question": question, "answer": d["answer"],
                            "final": final}
