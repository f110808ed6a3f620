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
    # re-running skips every finished stage: the evaluation's chunks are read, not rerun, and
    # its results rebuilt from them (the same figures)
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0
    assert "already trained" in r2.stderr and "1 of 1 chunks already evaluated" in r2.stderr
    again = json.loads((out / "eval" / "results.json").read_text())
    assert again["summary"] == res["summary"] and again["headline"] == res["headline"]


def test_demo_refuses_to_resume_from_another_base_model(tmp_path):
    import jaxselfeval as jse
    from jaxselfeval.commands.demo import _check_same_base

    base, out = tmp_path / "base", tmp_path / "demo"
    base.mkdir()
    out.mkdir()
    (base / "model.safetensors").write_bytes(b"weights v1")
    _check_same_base(base, out)  # a fresh directory: records the base model
    (out / "data").mkdir()
    _check_same_base(base, out)  # same model: resumes
    (base / "model.safetensors").write_bytes(b"weights v2")
    with pytest.raises(jse.JSEError, match="made from another base model .* remove it, or pass --out"):
        _check_same_base(base, out)
    (out / "base_model.json").unlink()
    with pytest.raises(jse.JSEError, match="files of an older demo"):
        _check_same_base(base, out)


def test_demo_summary_leaves_out_what_did_not_run():
    """The closing line: no "by RM 0.0%" when no reward model ran; the token's AUROC on the test
    pool, with validation's named apart."""
    from pathlib import Path

    from jaxselfeval.commands.demo import demo_summary

    h = {"one_sample": 0.445, "bon_self": 0.455, "bon_rm": None, "majority": 0.555,
         "bon_likelihood": 0.595, "adaptive_acc_at_1.2": 0.555}
    line = demo_summary(5202, h, {"auroc": 0.795}, {"auroc_full": 0.825}, Path("r.md"))
    assert "RM" not in line and "by log-prob 59.5%" in line and "one sample 44.5%" in line
    assert "AUROC 0.795 (test pool), 0.825 (validation)" in line
    assert "by RM 91.0%" in demo_summary(1, h | {"bon_rm": 0.91}, {}, {}, Path("r.md"))
