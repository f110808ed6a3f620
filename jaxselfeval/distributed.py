"""Multi-host plumbing: join the processes of a pod, know who is main, split work by host.

`initialize()` must run before anything touches a JAX device (it is the first thing the
`jaxselfeval` command does). It calls `jax.distributed.initialize`:
- with explicit arguments, or JSE_COORDINATOR (host:port) + JSE_NUM_PROCESSES + JSE_PROCESS_ID
  (e.g. several processes on localhost, or GPU hosts without SLURM);
- with no arguments (JAX detects Cloud TPU, SLURM, Open MPI, ...) when JSE_DISTRIBUTED=1
  (set by tpu/run.sh on every TPU worker) or when a multi-task SLURM / Open MPI job is seen;
- not at all otherwise (one process; JSE_DISTRIBUTED=0 forces this).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence, TypeVar

from jaxselfeval.errors import JSEError

T = TypeVar("T")
log = logging.getLogger(__name__)
_state = {"initialized": False, "process_id": 0, "num_processes": 1}


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise JSEError(f"{name}={v!r} is not an integer: set it to a number") from None


def _auto_detected() -> bool:
    """A launcher that JAX's cluster detection understands started several processes."""
    flag = os.environ.get("JSE_DISTRIBUTED", "").lower()
    if flag in ("0", "false", "off", "no"):
        return False
    if flag in ("1", "true", "on", "yes", "auto"):
        return True
    if (_env_int("SLURM_NTASKS") or 1) > 1 and "SLURM_PROCID" in os.environ:
        return True
    return (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join the other processes (see the module doc). Returns True when distributed.
    Calling it again is a no-op; a single process never imports jax here."""
    if _state["initialized"]:
        return True
    coordinator = coordinator or os.environ.get("JSE_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int("JSE_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JSE_PROCESS_ID")
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if not explicit and not _auto_detected():
        return False
    if explicit and (coordinator is None or num_processes is None or process_id is None):
        raise JSEError("multi-process run needs all three of JSE_COORDINATOR (host:port), "
                       "JSE_NUM_PROCESSES and JSE_PROCESS_ID: set the missing ones")
    if explicit and not 0 <= process_id < num_processes:
        raise JSEError(f"JSE_PROCESS_ID={process_id} is outside 0..{num_processes - 1}: "
                       "give each process a distinct id below JSE_NUM_PROCESSES")
    import jax

    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
    _state.update(initialized=True, process_id=jax.process_index(),
                  num_processes=jax.process_count())
    setup_logging()
    log.info("process %d of %d joined", _state["process_id"], _state["num_processes"])
    return True


def _jax_distributed() -> bool:
    """`jax.distributed.initialize` was called (by us or by the caller's own code): JAX's process
    index and count are then the pod's. Public API only; never imports jax itself."""
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized()


def process_index() -> int:
    """This process's index: ours after `initialize`, JAX's when the caller joined the processes
    with `jax.distributed.initialize` itself, else 0 (never starts a JAX backend itself)."""
    if _state["initialized"]:
        return _state["process_id"]
    return sys.modules["jax"].process_index() if _jax_distributed() else 0


def process_count() -> int:
    """The number of processes (1 when not distributed; see `process_index`)."""
    if _state["initialized"]:
        return _state["num_processes"]
    return sys.modules["jax"].process_count() if _jax_distributed() else 1


def is_main() -> bool:
    """True on process 0 (the one that prints, writes reports and exports)."""
    return process_index() == 0


_barriers: dict[str, int] = {}


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Wait until every process reaches the barrier `name` (no-op for one process).

    A barrier of the coordination service (the key-value store `jax.distributed` runs), not an
    XLA collective: processes that arrive minutes apart (each did its own share of the work)
    wait for each other. `multihost_utils.sync_global_devices` is an all-gather; on XLA:CPU
    (gloo) the first process gives up after 30 s and the late one then waits forever
    (tests/repro_barrier_skew.py). After `timeout_s` (default JSE_BARRIER_TIMEOUT_S, else one
    hour) a JSEError names the barrier. Every process must pass the same barriers in the same
    order (each use of a name gets its own key)."""
    import jax

    if jax.process_count() <= 1:
        return
    from orbax.checkpoint import multihost

    if timeout_s is None:
        timeout_s = float(os.environ.get("JSE_BARRIER_TIMEOUT_S") or 3600)
    n = _barriers[name] = _barriers.get(name, 0) + 1
    try:
        sync = multihost.get_barrier_sync_fn()
    except ValueError:  # several processes but no jax.distributed client: the XLA barrier
        from jax.experimental import multihost_utils

        return multihost_utils.sync_global_devices(name)
    try:
        sync(key=f"{name}.{n}", timeout_ms=int(timeout_s * 1000))
    except Exception as e:  # the service reports a timeout or a process that left
        raise JSEError(f"process {process_index()} waited {timeout_s:.0f} s at barrier '{name}' "
                       f"but not every process arrived ({type(e).__name__}): look at the other "
                       f"processes' logs, or raise JSE_BARRIER_TIMEOUT_S") from e


def host_shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This host's contiguous part of `items`: parts differ in length by at most one, and
    concatenating the parts of processes 0..count-1 gives `items` back in order."""
    index = process_index() if index is None else index
    count = process_count() if count is None else count
    if not 0 <= index < count:
        raise JSEError(f"process index {index} is outside 0..{count - 1}")
    n = len(items)
    lo, hi = index * n // count, (index + 1) * n // count
    return list(items[lo:hi])


def setup_logging(level: int | None = None) -> None:
    """Silence processes other than 0: they log warnings and errors only (with their index)."""
    idx = process_index()
    root = logging.getLogger()
    if idx != 0:
        root.setLevel(logging.WARNING)
        fmt = f"[process {idx}] %(asctime)s %(levelname)s %(name)s: %(message)s"
        for h in root.handlers:
            h.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    elif level is not None:
        root.setLevel(level)
