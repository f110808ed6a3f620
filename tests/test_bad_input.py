"""Bad checkpoints and configs fail with one clear line and a non-zero exit."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxselfeval as jse


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "jaxselfeval.cli", *args], capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stderr.strip().splitlines()


def _edit_config(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


def test_unsupported_model_type_cli_one_line(hf_models, tmp_path):
    d = _copy(hf_models["llama3_gqa2_untied"][0], tmp_path / "m")
    _edit_config(d, model_type="mistral")
    code, err = _cli("info", "--model", str(d))
    assert code == 2 and len(err) == 1
    assert "unsupported model_type 'mistral'" in err[0]


def test_unsupported_rope_type(hf_models, tmp_path):
    d = _copy(hf_models["llama3_gqa2_untied"][0], tmp_path / "m")
    _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    with pytest.raises(jse.JSEError, match="unsupported rope_type 'yarn'"):
        jse.load_pretrained(d)


def test_missing_shard_is_named(hf_models, tmp_path):
    model = jse.load_pretrained(hf_models["llama3_gqa2_untied"][0])
    d = jse.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=40_000)
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    code, err = _cli("info", "--model", str(d), "--load")
    assert code == 2 and len(err) == 1
    assert victim.name in err[0] and "missing safetensors shard" in err[0]


def test_wrong_tensor_shape_is_named(hf_models, tmp_path):
    d = _copy(hf_models["llama3_gqa2_untied"][0], tmp_path / "m")
    t = load_file(d / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    t[name] = np.zeros((8, 64), np.float32)
    save_file(t, d / "model.safetensors")
    with pytest.raises(jse.JSEError, match=f"tensor '{name}' has shape \\(8, 64\\)"):
        jse.load_pretrained(d)


def test_missing_dir_and_missing_weights(tmp_path):
    with pytest.raises(jse.JSEError, match="does not exist"):
        jse.load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(jse.JSEError, match="no config.json"):
        jse.load_pretrained(tmp_path / "empty")


def test_export_leaves_nothing_half_written(hf_models, tmp_path, monkeypatch):
    import jaxselfeval.hf_io as hf_io

    model = jse.load_pretrained(hf_models["llama3_gqa2_untied"][0])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf_io, "save_file", boom)
    with pytest.raises(OSError):
        jse.save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("args,msg", [
    (["eval", "--model", "/nonexistent"], "no model directory '/nonexistent'"),
    (["eval", "limit=-3"], "limit must be >= 1, got -3"),
    (["eval", "skip=-1"], "skip must be >= 0"),
    (["accuracy", "--task-args", "shots=[0]"], "shots are operation counts >= 1"),
    (["accuracy", "--task-args", "extract=loose"], "unknown extract 'loose'"),
])
def test_eval_and_accuracy_refuse_bad_settings_before_any_work(args, msg, tmp_path):
    """Each refusal is one line and exit 2, before a model is loaded or a file written."""
    code, err = _cli(*args, *(["--out", str(tmp_path / "ev")] if args[0] == "eval" else []))
    assert code == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "ev").exists()
