"""Worker for test_distributed: one of N processes building the capability dataset together."""

import os
import sys

# argv: port, processes, process id, model dir, out dir
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

port, nproc, pid, model, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc,
                               process_id=pid)

import logging  # noqa: E402

logging.basicConfig(level=logging.INFO)

from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset  # noqa: E402

build_dataset(BuildConfig(model=model, splits={"train": 8, "validation": 4}, n=3, max_new_tokens=16,
                          truncations=[4], shard_prompts=2, out_dir=out), progress=False)
