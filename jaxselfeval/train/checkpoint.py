"""Orbax checkpoints: async save every k steps, keep the last m, exact resume, shape check.

A checkpoint at step k holds {"state": {"params", "opt"}, "data": {"step": k, seed, sizes,
fingerprint}}: the parameters, the optimizer state and the data position. Layout:
out_dir/model_config.json (the model's shape, written once) and out_dir/ckpt/<step>/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxselfeval.errors import JSEError

log = logging.getLogger(__name__)

_SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


class Checkpointer:
    """`save(step, params, opt_state, data)` every `every` steps (async), keeping `keep`."""

    def __init__(self, directory, *, keep: int = 2, every: int = 200, model_config=None):
        self.dir = Path(directory).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "model_config.json"
        if model_config is not None:
            want = model_config.to_hf_dict()
            if meta.exists():
                have = json.loads(meta.read_text())
                diff = [k for k in want if have.get(k) != want[k] and k != "dtype"]
                diff.sort(key=lambda k: k not in _SHAPE_KEYS)
                if diff:
                    k = diff[0]
                    raise JSEError(f"checkpoint directory '{self.dir}' holds a model of another "
                                   f"shape ({k}: {have.get(k)} there, {want[k]} here): use a new "
                                   "out_dir or the matching config")
            elif jax.process_index() == 0:
                meta.write_text(json.dumps(want, indent=2))
        self.mgr = ocp.CheckpointManager(
            self.dir / "ckpt",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                                 enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self.mgr.latest_step()

    def save(self, step: int, params, opt_state, data: dict | None = None, *,
             force: bool = False) -> bool:
        """Start an async save if `step` is due (or `force`); True if one was started."""
        return self.mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "opt": opt_state}),
            data=ocp.args.JsonSave({"step": int(step), **(data or {})})), force=force)

    def reached_preemption(self, step: int) -> bool:
        """Multi-host: all hosts agreed on this step to save after a SIGTERM (jax's sync)."""
        return jax.process_count() > 1 and self.mgr.reached_preemption(step)

    def restore(self, step: int, params, opt_state):
        """Restore into the structure/shardings of the given (possibly abstract) trees.

        Returns (params, opt_state, data dict)."""
        self._check_shapes(step, params)
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt": opt_state})
        out = self.mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return out["state"]["params"], out["state"]["opt"], dict(out["data"] or {})

    def _check_shapes(self, step, params):
        """A clear error (not orbax's) when the saved parameters have other shapes."""
        try:
            saved = self.mgr.item_metadata(step)["state"]["params"]
        except Exception:  # noqa: BLE001 - no metadata: let restore report
            log.debug("no checkpoint metadata at step %d", step, exc_info=True)
            return
        have = {jax.tree_util.keystr(k): tuple(v.shape)
                for k, v in jax.tree_util.tree_flatten_with_path(saved)[0] if hasattr(v, "shape")}
        want = {jax.tree_util.keystr(k): tuple(np.shape(v))
                for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        for k, shape in want.items():
            cand = [h for h in have if h == k or k.startswith(h) or h.startswith(k)]
            if cand and have[cand[0]] != shape:
                raise JSEError(f"checkpoint {self.dir}/ckpt/{step} holds parameter {k} of shape "
                               f"{have[cand[0]]}, the model here has {shape}: use a new out_dir "
                               "or the matching config")

    def wait(self):
        self.mgr.wait_until_finished()

    def close(self):
        self.mgr.wait_until_finished()
        self.mgr.close()
