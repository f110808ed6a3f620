"""Minimal reproduction of the two-process hang (XLA:CPU, gloo): two processes of two CPU devices
each, joined by jax.distributed, each runs local work on its own 2-device mesh, then waits at a
barrier; process 1 arrives SKEW seconds after process 0.

    python tests/repro_barrier_skew.py PORT 0 45 xla & python tests/repro_barrier_skew.py PORT 1 45 xla

mode xla (`multihost_utils.sync_global_devices`, an all-gather over gloo): process 0 fails after
30 s ("Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out with key
cpu:gloo/0,2048/1 and duration: 30s") and process 1, arriving at 45 s, waits forever in the
all-gather (killed after 180 s; jax 0.10.2 on an AMD EPYC). mode ours
(`jaxselfeval.distributed.barrier`, the coordination service's barrier): both pass at 57 s.
In the tests an eval's processes reach the barrier after their chunks, which on a loaded machine
can be more than 30 s apart: that was the "1 run in 10" hang. argv: port, process id, skew
seconds, mode (xla | ours)."""

import faulthandler
import os
import signal
import sys
import time

faulthandler.register(signal.SIGUSR1)
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

port, pid, skew, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=pid)
t0 = time.time()
mesh = Mesh(np.array(jax.local_devices()), ("fsdp",))
x = jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(mesh, P("fsdp")))
f = jax.jit(lambda a: (a @ a.T).sum(), out_shardings=NamedSharding(mesh, P()))
for _ in range(20):  # this process's own work: local collectives on its 2-device mesh
    float(f(x))
if pid == 1:
    time.sleep(skew)
print(f"process {pid} at barrier after {time.time() - t0:.1f}s", flush=True)
if mode == "xla":
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("b1")
else:
    from jaxselfeval.distributed import barrier

    barrier("b1")
    barrier("b1")  # a name used twice gets its own key each time
print(f"process {pid} passed barrier after {time.time() - t0:.1f}s", flush=True)
