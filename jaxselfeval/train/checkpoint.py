"""Orbax checkpoints: async save every k steps, keep the last m, exact resume, shape check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxselfeval.errors import JSEError

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves {params, opt_state} at a step; the data position is the step itself."""

    def __init__(self, directory, *, keep: int = 2, every: int = 200, model_config=None):
        self.dir = Path(directory).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "model_config.json"
        if model_config is not None:
            want = model_config.to_hf_dict()
            if meta.exists():
                have = json.loads(meta.read_text())
                diff = [k for k in want if have.get(k) != want[k] and k != "dtype"]
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

    def save(self, step: int, params, opt_state, *, force: bool = False) -> bool:
        return self.mgr.save(step, args=ocp.args.StandardSave({"params": params, "opt": opt_state}),
                             force=force)

    def restore(self, step: int, params, opt_state):
        """Restore into the structure/shardings of the given (possibly abstract) trees."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt": opt_state})
        out = self.mgr.restore(step, args=ocp.args.StandardRestore(target))
        return out["params"], out["opt"]

    def wait(self):
        self.mgr.wait_until_finished()

    def close(self):
        self.mgr.wait_until_finished()
        self.mgr.close()
