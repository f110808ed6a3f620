"""YAML configs + key=value overrides: values take the fields' declared types, bad ones are one
clear error naming the key."""

import pytest

import jaxselfeval as jse
from jaxselfeval.configs import load_dataclass_config
from jaxselfeval.evaluate.harness import EvalConfig
from jaxselfeval.selfeval.dataset import BuildConfig
from jaxselfeval.selfeval.train import SelfEvalConfig
from jaxselfeval.train.config import load_train_config


def test_overrides_take_the_declared_types():
    cfg = load_dataclass_config(SelfEvalConfig, "selfeval_tiny", ["lr=3e-4", "steps=12",
                                                                  "lora=null", "remat=true"])
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float) and cfg.steps == 12
    assert cfg.lora is None and cfg.remat is True
    ev = load_dataclass_config(EvalConfig, None, ["rounds=[1, 2]", "threshold=1"])
    assert ev.rounds == (1, 2) and ev.threshold == 1.0
    b = load_dataclass_config(BuildConfig, "data_tiny", ["prompt_files={train: a.jsonl}"])
    assert b.prompt_files == {"train": "a.jsonl"} and b.n == 8
    assert load_train_config("train_tiny", ["lr=1e-4"]).lr == 1e-4


@pytest.mark.parametrize("ov, msg", [
    ("steps=abc", "config key 'steps' must be an integer, got 'abc'"),
    ("steps=1.5", "config key 'steps' must be an integer"),
    ("lr=fast", "config key 'lr' must be a number"),
    ("remat=maybe", "config key 'remat' must be true or false"),
    ("stepz=3", "unknown config key 'stepz'.*steps"),
])
def test_bad_values_name_the_key(ov, msg):
    with pytest.raises(jse.JSEError, match=msg):
        load_dataclass_config(SelfEvalConfig, "selfeval_tiny", [ov])


@pytest.mark.parametrize("cmd,keys", [("eval", ["combined_keep=0.25", "keep_fractions=", "limit=300"]),
                                      ("generate", ["keep_fraction=0.125", "threshold=0.8"])])
def test_help_lists_every_setting_with_its_default(cmd, keys, capsys):
    from jaxselfeval.cli import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for k in keys:
        assert k in text, k


@pytest.mark.parametrize("ov, msg", [
    ("combined_keep=0", "combined_keep must be in \\(0, 1\\]"),
    ("combined_keep=1.5", "combined_keep must be in \\(0, 1\\]"),
    ("threshold=2", "threshold must be in \\[0, 1\\]"),
])
def test_bad_eval_settings_name_the_setting(ov, msg):
    with pytest.raises(jse.JSEError, match=msg):
        load_dataclass_config(EvalConfig, None, [ov]).validate()
