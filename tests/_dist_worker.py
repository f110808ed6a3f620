"""Worker for test_distributed: one of N processes (2 CPU devices each) training the tiny model."""

import faulthandler
import os
import signal
import sys

faulthandler.register(signal.SIGUSR1)  # a hung run's stacks (conftest.communicate_all)

# argv: port, processes, process id, out dir, local devices
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[5]}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

port, nproc, pid, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc,
                               process_id=pid)
sys.path.insert(0, os.path.dirname(__file__))
import json  # noqa: E402

from test_train import CFG, _data  # noqa: E402

import jaxselfeval as jse  # noqa: E402
from jaxselfeval.train import TrainConfig, lm_loss, run_training  # noqa: E402

cfg = TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=2,
                  mesh="data=2,fsdp=-1", compute_dtype="float32", log_every=1)
model, hist = run_training(jse.create_model(CFG, seed=0), _data(), lm_loss, cfg, out_dir=out,
                           progress=False)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

# the final parameters, gathered from every process's shards (what the last checkpoint holds)
params = {jax.tree_util.keystr(k): np.asarray(multihost_utils.process_allgather(v, tiled=True))
          for k, v in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
if jax.process_index() == 0:
    with open(os.path.join(out, "losses.json"), "w") as f:
        json.dump([h["loss"] for h in hist], f)
    np.savez(os.path.join(out, "params.npz"), **params)
