"""Two processes on localhost joined by jax.distributed.initialize: training gives the losses of
one process with the same mesh, a dataset build writes the dataset of one process, and an
evaluation split between them reports what one process reports (each of the two sampling on its
own two devices with the model sharded over them, the one process on one device)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import WorkersHung, communicate_all

WORKER = str(Path(__file__).parent / "_dist_worker.py")
TASK_WORKER = str(Path(__file__).parent / "_dist_task_worker.py")


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_then_one(what: str, model, tmp_path, mesh: str) -> list[str]:
    """Run `what` (build | eval) with two processes of two devices each, the model sharded over
    them by `mesh`, into tmp_path/two, then with one process on one device into tmp_path/one;
    returns the two processes' logs."""
    # no retry: the hang (1 run in ~10) was processes reaching an XLA all-gather barrier more
    # than 30 s apart (tests/repro_barrier_skew.py); barriers now use the coordination service
    port = _port()
    procs = [subprocess.Popen([sys.executable, TASK_WORKER, str(port), "2", str(i), str(model),
                               str(tmp_path / "two"), what, "2", mesh],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = communicate_all(procs, 600)  # a loaded 2-core machine compiles slowly
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    r = subprocess.run([sys.executable, TASK_WORKER, "0", "1", "0", str(model), str(tmp_path / "one"),
                        what], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = _port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(port), "2", str(i), str(tmp_path / "two"), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = communicate_all(procs)
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    # one process, same 4-device mesh (data=2, fsdp=2) built from 4 local devices
    r = subprocess.run([sys.executable, WORKER, "0", "1", "0", str(tmp_path / "one"), "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    np.testing.assert_allclose(two, one, rtol=1e-5)
    # the final checkpoint's parameters, too
    with np.load(tmp_path / "two" / "params.npz") as p2, np.load(tmp_path / "one" / "params.npz") as p1:
        assert sorted(p2.files) == sorted(p1.files) and len(p1.files) > 5
        for k in p1.files:
            np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "ckpt").iterdir())


@pytest.mark.slow
def test_two_process_dataset_build_equals_one_process(tmp_path):
    """Two processes split the shards between them; the TFDS dataset process 0 writes equals a
    single-process build row for row."""
    from conftest import make_tiny_selfeval_model
    from jaxselfeval.selfeval.dataset import load_rows

    outs = _two_then_one("build", make_tiny_selfeval_model(tmp_path / "model"), tmp_path, "fsdp=2")
    for i in range(2):  # each process sampled its half of the 6 shards on its own 2 devices
        assert f"process {i} samples 3 of the 6 missing shards" in outs[i], outs[i][-3000:]
        assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in outs[i]
    for split in ("train", "validation"):
        two, one = load_rows(tmp_path / "two", split), load_rows(tmp_path / "one", split)
        key = lambda r: r["id"]  # noqa: E731
        two, one = sorted(two, key=key), sorted(one, key=key)
        assert len(one) > 0 and [r["id"] for r in two] == [r["id"] for r in one]
        for a, b in zip(two, one):
            for k in ("prompt_ids", "response_ids"):
                np.testing.assert_array_equal(a[k], b[k])
            assert (a["target"], a["reward"], a["truncation"]) == (b["target"], b["reward"], b["truncation"])
    assert len(list((tmp_path / "two" / "shards").glob("*.jsonl"))) == 6


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tmp_path):
    """Two processes split the evaluation's chunks; the results process 0 merges equal a
    single-process evaluation's (wall times aside)."""
    from conftest import make_tiny_selfeval_model

    outs = _two_then_one("eval", make_tiny_selfeval_model(tmp_path / "model"), tmp_path, "tensor=2")
    for i in range(2):
        assert f"process {i} evaluates 2 of the 4 missing chunks" in outs[i], outs[i][-3000:]
        assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 2}" in outs[i]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["summary"]["one"]["n"] == 4
    assert _without_wall(two["summary"]) == _without_wall(one["summary"])
    assert two["sweeps"].keys() == one["sweeps"].keys()
    for kind, sweep in one["sweeps"].items():
        if kind.startswith("threshold"):  # swept at the values the scores take: equal within a
            _same_threshold_sweep(two["sweeps"][kind], sweep)  # tolerance, outcomes exactly
        else:
            assert _without_wall(two["sweeps"][kind]) == _without_wall(sweep), kind
    # the pool's statistics include continuous ones of the scores (ECE), and scores computed on a
    # tensor=2 mesh differ from one device's in the last float32 bits: equal within a tolerance
    assert two["pool"].keys() == one["pool"].keys()
    for k, v in one["pool"].items():
        if k == "by_kind":  # {kind: {statistic: value}}
            assert two["pool"][k].keys() == v.keys()
            for kind, stats in v.items():
                assert two["pool"][k][kind] == pytest.approx(stats, rel=1e-6, abs=1e-7,
                                                             nan_ok=True), (k, kind)
        elif isinstance(v, str):  # ece_target
            assert two["pool"][k] == v, k
        else:
            assert two["pool"][k] == pytest.approx(v, rel=1e-6, abs=1e-7, nan_ok=True), k


def _same_threshold_sweep(a: dict, b: dict):
    """Two adaptive threshold sweeps {threshold: aggregate}, their thresholds the values scores
    computed on different meshes took: the same count, thresholds equal within float32's last
    bits, each one's outcome equal."""
    ka, kb = sorted(a, key=float), sorted(b, key=float)
    assert len(ka) == len(kb)
    assert [float(k) for k in ka] == pytest.approx([float(k) for k in kb], rel=1e-5, abs=1e-7)
    for x, y in zip(ka, kb):
        assert _without_wall(a[x]) == _without_wall(b[y]), (x, y)


def _without_wall(x) -> str:
    """A results.json part without its wall times (the one thing two runs do not share), as
    JSON text (nan equals nan)."""
    def strip(x):
        return {k: strip(v) for k, v in x.items() if k != "wall_s"} if isinstance(x, dict) else x

    return json.dumps(strip(x), sort_keys=True)


def test_hung_workers_are_killed_and_reported():
    procs = [subprocess.Popen([sys.executable, "-c", f"print('worker {i}', flush=True); "
                               "import time; time.sleep(60)"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    with pytest.raises(WorkersHung, match="(?s)worker 0.*---.*worker 1"):
        communicate_all(procs, 2, fail=False)
    assert all(p.poll() is not None for p in procs)  # none left running


def test_a_hung_worker_is_killed_and_shows_where_it_hung():
    """communicate_all sends SIGUSR1 before killing a worker past its time: the workers register
    faulthandler for it, so the log names the call each process was stuck in."""
    code = ("import faulthandler, signal, time\n"
            "faulthandler.register(signal.SIGUSR1)\n"
            "def stuck_in_a_collective():\n"
            "    time.sleep(60)\n"
            "print('started', flush=True)\n"
            "stuck_in_a_collective()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    with pytest.raises(WorkersHung) as e:
        communicate_all([p], timeout=5, fail=False)
    assert p.returncode is not None and "stuck_in_a_collective" in e.value.args[0], e.value.args[0]


REPRO = str(Path(__file__).parent / "repro_barrier_skew.py")


@pytest.mark.slow
def test_processes_arriving_45_s_apart_pass_the_barrier():
    """distributed.barrier is the coordination service's: process 1 reaching it 45 s after
    process 0 passes (an XLA all-gather barrier on XLA:CPU fails process 0 after 30 s and leaves
    process 1 waiting forever: tests/repro_barrier_skew.py, mode xla), twice under one name."""
    port = _port()
    procs = [subprocess.Popen([sys.executable, REPRO, str(port), str(i), "45", "ours"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = communicate_all(procs, 240)
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert all(f"process {i} passed barrier" in outs[i] for i in range(2))
