"""Export a reward model as an HF `LlamaForSequenceClassification` directory (transformers
loads it; `jaxselfeval.selfeval.reward_model.load_reward_model` reads it back)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from jaxselfeval.fileio import swap_dir, temp_dir_beside
from jaxselfeval.hf_io import _hf_tensors, _to_host, check_export_target, save_pretrained
from jaxselfeval.lora import merge_lora
from jaxselfeval.model.llama import as_dtype


class _WithoutLMHead:
    """The backbone as `save_pretrained` sees it: tied embeddings, so no lm_head is written."""

    def __init__(self, model):
        self._model = model
        self.config = model.config.replace(tie_word_embeddings=True)

    def __getattr__(self, name):
        return getattr(self._model, name)


def save_reward_model(rm, out_dir, *, dtype=None, tokenizer_dir=None,
                      max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False) -> Path:
    """Write an HF directory that `LlamaForSequenceClassification.from_pretrained` loads.

    The backbone is written by `save_pretrained` (one tensor on the host at a time, shards);
    `score.weight` [num_labels, D] goes in one more small shard listed in the index. The
    directory appears whole or not at all; only process 0 writes. An export already at `out_dir`
    is kept until the new one is in place; anything else there is refused unless `overwrite`.
    `rm`: a `RewardModel` (backbone, head [D, num_labels], pad_token_id).
    """
    out = Path(out_dir)
    check_export_target(out, overwrite)
    dt = np.dtype(as_dtype(dtype) if dtype is not None else rm.backbone.param_dtype)
    head = _to_host(rm.head[...]).astype(np.float32)  # collective on multi-host: every process
    writer = jax.process_index() == 0
    if writer:
        base = temp_dir_beside(out, ".tmp-rm-")
    else:
        base = out.parent / ".tmp-rm-unused"
    src = tokenizer_dir or getattr(rm, "source_dir", None) or getattr(rm.backbone, "source_dir",
                                                                         None)
    try:
        backbone = rm.backbone
        if getattr(backbone, "lora", None) is not None:  # adapters are exported merged into W
            backbone = merge_lora(backbone)
        backbone = _WithoutLMHead(backbone)
        d = save_pretrained(backbone, base / "rm", dtype=dtype,
                            max_shard_bytes=max_shard_bytes, tokenizer_dir=src)
        if not writer:
            return out
        (d / "selfeval.json").unlink(missing_ok=True)  # not a capability-token model
        idx = d / "model.safetensors.index.json"
        if idx.exists():
            index = json.loads(idx.read_text())
            wm, total = index["weight_map"], index.get("metadata", {}).get("total_size", 0)
        else:  # one file: every tensor save_pretrained wrote, sized from the model
            shapes = {name: shape for name, shape, _get in _hf_tensors(backbone)}
            wm = {name: "model.safetensors" for name in shapes}
            total = sum(math.prod(s) for s in shapes.values()) * dt.itemsize
        files = sorted(set(wm.values()))
        k = len(files) + 1
        rename = {f: f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i, f in enumerate(files)}
        for f, g in rename.items():
            os.rename(d / f, d / g)
        score_file = f"model-{k:05d}-of-{k:05d}.safetensors"
        score = np.ascontiguousarray(head.T).astype(dt)  # [num_labels, D]
        save_file({"score.weight": score}, str(d / score_file), metadata={"format": "pt"})
        wm = {n: rename[f] for n, f in wm.items()} | {"score.weight": score_file}
        idx.write_text(json.dumps({"metadata": {"total_size": int(total) + score.nbytes},
                                   "weight_map": wm}, indent=2))
        cfg = json.loads((d / "config.json").read_text())
        L = rm.num_labels
        cfg.update(architectures=["LlamaForSequenceClassification"], pad_token_id=rm.pad_token_id,
                   id2label={str(i): f"LABEL_{i}" for i in range(L)},
                   label2id={f"LABEL_{i}": i for i in range(L)})
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        swap_dir(d, out)  # the old export is removed only once the new one is in place
        return out
    finally:
        if writer:
            shutil.rmtree(base, ignore_errors=True)
