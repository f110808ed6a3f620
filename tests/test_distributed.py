"""Two processes on localhost joined by jax.distributed.initialize (2 devices each) train with
the same losses as one process with 4 devices."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = str(Path(__file__).parent / "_dist_worker.py")


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = _port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(port), "2", str(i), str(tmp_path / "two"), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    # one process, same 4-device mesh (data=2, fsdp=2) built from 4 local devices
    r = subprocess.run([sys.executable, WORKER, "0", "1", "0", str(tmp_path / "one"), "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    np.testing.assert_allclose(two, one, rtol=1e-5)
