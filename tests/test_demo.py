"""The main job end to end, in a small configuration (CI runs it: marker `slow`)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_quick_runs_every_stage_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "jaxselfeval.cli", "demo", "--quick", "--no-progress",
           "--out", str(tmp_path / "demo")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    for s in ("Best-of-8 by self-evaluation", "majority vote", "external reward model", "adaptive",
              "pruned at", "Threshold sweep", "auroc_full"):
        assert s in report, s
    for f in ("accuracy_vs_samples.png", "accuracy_vs_tokens.png", "reliability.png"):
        assert (out / f).stat().st_size > 5000
    res = json.loads((out / "eval" / "results.json").read_text())
    assert res["summary"]["one"]["n"] == 24
    # re-running skips every finished stage
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0
    assert "already trained" in r2.stderr and "evaluation already done" in r2.stderr
