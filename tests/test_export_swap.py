"""Exports replace what is at their path safely: a directory that is not an HF model export is
refused (and left as it was) unless overwrite=True, and an old export is kept until the new one
is in place, so a failure or a kill at any step leaves a whole export (old or new)."""

import os

import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.selfeval.reward_model import init_reward_model, save_reward_model

CFG = jse.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _weights(d):
    return (d / "model.safetensors").read_bytes()


def _user_dir(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my notes")
    return d


def test_a_directory_that_is_not_an_export_is_refused_and_untouched(tmp_path):
    model = jse.create_model(CFG, seed=0)
    d = _user_dir(tmp_path)
    for save in (lambda out, **k: jse.save_pretrained(model, out, **k),
                 lambda out, **k: save_reward_model(init_reward_model(model), out, **k)):
        with pytest.raises(jse.JSEError) as e:
            save(d)
        msg = str(e.value)
        assert "is not an HF model export" in msg and "overwrite=True" in msg and "\n" not in msg
        assert sorted(os.listdir(d)) == ["notes.txt"] and (d / "notes.txt").read_text() == "my notes"
        assert sorted(os.listdir(tmp_path)) == ["mine"]  # no temporary left beside it
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(jse.JSEError, match="is not a directory an export wrote"):
        jse.save_pretrained(model, f)
    assert f.read_text() == "x"
    hf = tmp_path / "downloaded"  # an HF model directory with the user's own files
    jse.save_pretrained(model, hf)
    (hf / "LICENSE").write_text("terms")
    with pytest.raises(jse.JSEError, match="holds files an export does not write .*'LICENSE'"):
        jse.save_pretrained(model, hf)
    assert (hf / "LICENSE").read_text() == "terms"
    empty = tmp_path / "empty"
    empty.mkdir()
    jse.save_pretrained(model, empty)  # an empty directory has nothing to lose
    jse.save_pretrained(model, d, overwrite=True)  # told to: replaced
    assert jse.load_pretrained(d).config == model.config and not (d / "notes.txt").exists()


def _fail_at(monkeypatch, calls, fail):
    """os.replace that raises at the calls numbered in `fail` (1-based)."""
    real = os.replace

    def replace(a, b):
        calls.append((str(a), str(b)))
        if len(calls) in fail:
            raise OSError(f"injected failure at rename {len(calls)}")
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("fail", [{1}, {2}])
def test_a_failed_swap_keeps_the_old_export(tmp_path, monkeypatch, fail):
    """Rename 1 moves the old export aside, rename 2 moves the new one in: a failure at either
    leaves the old export whole at its path (the old code removed it first: nothing was left)."""
    out = tmp_path / "export"
    jse.save_pretrained(jse.create_model(CFG, seed=0), out)
    old = _weights(out)
    calls = []
    _fail_at(monkeypatch, calls, fail)
    with pytest.raises(OSError, match="injected failure"):
        jse.save_pretrained(jse.create_model(CFG, seed=1), out)
    monkeypatch.undo()
    assert _weights(out) == old and jse.load_pretrained(out).config == CFG
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
    """A kill after the old export went aside and before the new one came in (rename 2 fails and
    so does putting the old one back, as if the process died): the old export is beside the
    path, and the next export puts it back first, then replaces it."""
    out = tmp_path / "export"
    jse.save_pretrained(jse.create_model(CFG, seed=0), out)
    old = _weights(out)
    calls = []
    _fail_at(monkeypatch, calls, {2, 3})
    with pytest.raises(OSError):
        jse.save_pretrained(jse.create_model(CFG, seed=1), out)
    monkeypatch.undo()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".export.old-")]
    assert not out.exists() and len(aside) == 1 and _weights(aside[0]) == old
    new = jse.create_model(CFG, seed=2)
    jse.save_pretrained(new, out)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    np.testing.assert_array_equal(np.asarray(jse.load_pretrained(out).wq[...]),
                                  np.asarray(new.wq[...]))


def test_an_export_replaces_an_export(tmp_path):
    out = tmp_path / "export"
    jse.save_pretrained(jse.create_model(CFG, seed=0), out)
    rm = init_reward_model(jse.create_model(CFG, seed=1))
    save_reward_model(rm, out)  # an HF export (of any kind) is replaced without asking
    save_reward_model(rm, out)
    assert (out / "config.json").exists() and sorted(os.listdir(tmp_path)) == ["export"]


def test_convert_refuses_a_users_directory_unless_told(tmp_path, capsys):
    from jaxselfeval.cli import main

    src = jse.save_pretrained(jse.create_model(CFG, seed=0), tmp_path / "src")
    d = _user_dir(tmp_path)
    assert main(["convert", "--model", str(src), "--out", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an HF model export" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(d)) == ["notes.txt"]
    assert main(["convert", "--model", str(src), "--out", str(d), "--overwrite"]) == 0
    assert (d / "config.json").exists() and not (d / "notes.txt").exists()
