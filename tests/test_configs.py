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
    ("steps=abc", "config key 'steps': Couldn't parse 'abc' into an int"),
    ("steps=1.5", "config key 'steps': Couldn't parse '1.5' into an int"),
    ("lr=fast", "config key 'lr': Couldn't parse 'fast' into a float"),
    ("remat=maybe", "config key 'remat': Couldn't parse 'maybe' into a bool"),
    ("stepz=3", "unknown config key 'stepz'.*steps"),
    # a nested section: its keys, its types and its own checks
    ("lora.rnak=3", "unknown config key 'lora.rnak' \\(did you mean 'rank'"),
    ("lora.rank=0", "config key 'lora': lora rank must be >= 1, got 0"),
    ("lora.targets=[wq,wx]", "config key 'lora': unknown lora target 'wx'"),
])
def test_bad_values_name_the_key(ov, msg):
    with pytest.raises(jse.JSEError, match=msg):
        load_dataclass_config(SelfEvalConfig, "selfeval_tiny", [ov])


@pytest.mark.parametrize("cmd,keys", [("eval", ["combined_keep=0.25", "keep_fractions=", "limit=300",
                                                "task_args={}", "top_p=1.0"]),
                                      ("generate", ["keep_fraction=0.125", "threshold=0.8", "top_p=1.0"]),
                                      ("train selfeval", ["kl_weight=0.0", "lm_weight=0.1"]),
                                      ("train base", ["init_from=None", "steps=2000"]),
                                      ("data build", ["top_p=1.0", "temperature=1.0"])])
def test_help_lists_every_setting_with_its_default(cmd, keys, capsys):
    from jaxselfeval.cli import main

    with pytest.raises(SystemExit) as e:
        main([*cmd.split(), "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for k in keys:
        assert k in text, k
    assert "MISSING" not in text  # a field with a default factory shows its value (task_args={})


@pytest.mark.parametrize("ov, msg", [
    ("combined_keep=0", "combined_keep must be in \\(0, 1\\]"),
    ("combined_keep=1.5", "combined_keep must be in \\(0, 1\\]"),
    ("threshold=2", "threshold must be in \\[0, 1\\]"),
    ("goals.aurox=1", "unknown config key 'goals.aurox' \\(did you mean 'auroc'"),
    ("goals.auroc=high", "config key 'goals.auroc': Couldn't parse 'high' into a float"),
])
def test_bad_eval_settings_name_the_setting(ov, msg):
    """Ranges are checked where the settings are read in (`EvalConfig.validate`); the goals are a
    section of their own."""
    with pytest.raises(jse.JSEError, match=msg):
        load_dataclass_config(EvalConfig, None, [ov]).validate()


def test_dotted_overrides_reach_free_form_sections_and_are_checked_where_used():
    """task_args / model / lora / prompt_files hold mappings the YAML may not set: a dotted
    override adds the key (a null section becomes a mapping); its name is checked by what uses it
    (the task's options, LlamaConfig, LoRAConfig); a dotted key under a plain value is one error."""
    from jaxselfeval.lora import LoRAConfig, load_lora_config
    from jaxselfeval.tasks import get_task

    t = load_train_config("train_tiny", ["task_args.max_steps=3", "task_args.direct_share=[0.5,0.3,0.1]",
                                         "model.num_hidden_layers=2"])
    assert t.task_args["max_steps"] == 3 and t.task_args["n_train"] == 40000
    assert t.model == {"num_hidden_layers": 2}
    assert get_task(t.task, **t.task_args).max_steps == 3
    with pytest.raises(jse.JSEError, match="task 'arithmetic' has no option 'n_trian' \\(did you "
                                           "mean 'n_train'\\?\\)"):
        get_task("arithmetic", **load_train_config("train_tiny", ["task_args.n_trian=5"]).task_args)
    b = load_dataclass_config(BuildConfig, "data_tiny", ["prompt_files.train=a.jsonl",
                                                         "splits.train=5"])
    assert b.prompt_files == {"train": "a.jsonl"} and b.splits == {"train": 5, "validation": 200}
    se = load_dataclass_config(SelfEvalConfig, "selfeval_tiny", ["lora=null", "lora.rank=4"])
    assert se.lora == LoRAConfig(rank=4) and load_lora_config(se.lora).rank == 4
    with pytest.raises(jse.JSEError, match="unknown config key 'lora.rnak' \\(did you mean 'rank'"):
        load_dataclass_config(SelfEvalConfig, "selfeval_tiny", ["lora.rnak=8"])
    with pytest.raises(jse.JSEError, match="config key 'n' is not a section: set n=VALUE"):
        load_dataclass_config(BuildConfig, "data_tiny", ["n.x=3"])
    with pytest.raises(jse.JSEError, match="unknown config key 'stepz' \\(did you mean 'steps'"):
        load_dataclass_config(SelfEvalConfig, "selfeval_tiny", ["stepz.x=3"])


def test_a_file_sets_part_of_a_section_and_a_free_mapping_whole(tmp_path):
    """A nested section in a file replaces only the keys it names (the goals' others keep their
    defaults); a free mapping (splits) is the file's own; both decode to their types."""
    from jaxselfeval.evaluate.report import Goals

    f = tmp_path / "e.yaml"
    f.write_text("goals: {auroc: 0.7}\nlimit: 5\n")
    ev = load_dataclass_config(EvalConfig, f, ["goals.ece=0.1"])
    assert ev.goals == Goals(auroc=0.7, ece=0.1) and ev.limit == 5
    f.write_text("splits: {train: 3}\n")
    assert load_dataclass_config(BuildConfig, f).splits == {"train": 3}
    f.write_text("goals: {aurox: 0.7}\n")
    with pytest.raises(jse.JSEError, match="unknown config key 'goals.aurox' .*auroc.* in "):
        load_dataclass_config(EvalConfig, f)
