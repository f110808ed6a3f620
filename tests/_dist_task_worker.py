"""Worker for test_distributed: one of N processes building the capability dataset ("build") or
evaluating the strategies ("eval") together, each on its own CPU devices (the model sharded over
them when a mesh is given, as on the hosts of a TPU pod)."""

import faulthandler
import os
import signal
import sys

faulthandler.register(signal.SIGUSR1)  # a hung run's stacks (conftest.communicate_all)

# argv: port, processes, process id, model dir, out dir, build | eval, [devices per process, mesh]
devices, mesh = (sys.argv[7], sys.argv[8] or None) if len(sys.argv) > 8 else ("1", None)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

port, nproc, pid, model_dir, out, what = sys.argv[1:7]
if int(nproc) > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=int(nproc),
                               process_id=int(pid))

assert jax.local_device_count() == int(devices)

import logging  # noqa: E402

logging.basicConfig(level=logging.INFO)

if what == "build":
    from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset

    build_dataset(BuildConfig(model=model_dir, splits={"train": 8, "validation": 4}, n=3,
                              max_new_tokens=16, truncations=[4], shard_prompts=2, out_dir=out,
                              mesh=mesh),
                  progress=False)
else:
    from jaxselfeval.evaluate.harness import EvalConfig, evaluate
    from jaxselfeval.hf_io import load_for_sampling
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    cfg = EvalConfig(limit=4, n=2, batch_prompts=1, max_new_tokens=8, rounds=(1, 1),
                     round_temperatures=(0.0, 1.0), thresholds=(0.5,), prune_at=(4,),
                     keep_fractions=(0.5,))
    evaluate(load_for_sampling(model_dir, mesh=mesh), load_tokenizer(model_dir),
             get_task("arithmetic"), cfg, out, progress=False)
