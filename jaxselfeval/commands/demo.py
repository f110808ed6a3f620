"""`jaxselfeval demo`: the whole method on one model, resumable stage by stage.

1. base model   configs' `model`: the shipped tiny model (jaxselfeval/assets/tiny_base), or
                SmolLM2-135M-Instruct fetched and converted (`jaxselfeval fetch smollm2`), or a dir
2. data build   on-policy samples, verifier rewards, capability targets (+ truncations)
3. train        the capability token (probe position, soft targets) -> HF dir + calibration plot,
                and the external reward-model baseline on the same rewards (a setting)
4. evaluate     every strategy on held-out problems, the token beside the free signals
                -> OUT/report.md + plots (and a second held-out set where the config names one)
Re-running skips finished stages.

    jaxselfeval demo                                         # configs/demo_tiny.yaml
    jaxselfeval demo --config configs/demo_smollm2.yaml      # a real pretrained model, as shipped
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from jaxselfeval.commands.evaluate import token_target

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoConfig:
    model: str = "tiny"  # tiny (shipped) | smollm2 (fetched + converted, cached) | an HF directory
    out: str = "runs/demo"
    data: str = "data_tiny"  # the stages' configs (configs/NAME.yaml) and their key=value overrides
    data_overrides: list = dataclasses.field(default_factory=list)
    selfeval: str = "selfeval_tiny"
    selfeval_overrides: list = dataclasses.field(default_factory=list)
    eval: str = "eval_tiny"
    eval_overrides: list = dataclasses.field(default_factory=list)
    # a second held-out set: eval overrides on top of the first's, e.g. [skip=200]; [] for none
    second_eval: list = dataclasses.field(default_factory=list)
    reward_model: bool = True  # train and evaluate the external reward-model baseline
    reward_model_steps: int = 150
    reward_model_seq_len: int = 160
    # the policy-damage check: the base model's sample@1 on the first this many candidates of
    # each evaluated problem (the same keys as the trained model's: paired); 0: all n
    base_samples: int = 0


# --quick: a few prompts per stage (a smoke run of every stage)
QUICK = {"data": ["splits={train: 40, validation: 20}", "n=4", "shard_prompts=20"],
         "selfeval": ["steps=20", "eval_every=10"],
         "eval": ["limit=24", "batch_prompts=24", "n=8", "rounds=[1,1,2,4]",
                  "round_temperatures=[0.0,0.5,0.5,0.5]"]}


def add_arguments(p):
    p.add_argument("--config", default="demo_tiny",
                   help="the demo's config: demo_tiny (the shipped tiny model) or "
                        "configs/demo_smollm2.yaml (SmolLM2-135M-Instruct as shipped)")
    p.add_argument("--out", default=None, help="output directory (default: the config's `out`)")
    p.add_argument("--quick", action="store_true",
                   help="a few prompts per stage (a smoke run of every stage, ~3 minutes)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value settings of the demo's config")


def base_model_dir(name: str) -> Path:
    """The demo's base model: "tiny" (shipped), "smollm2" (fetched once, cached) or a path."""
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.fetch import MODELS, fetch

    if name == "tiny":
        return Path(default_model_dir())
    if name in MODELS:
        return Path(fetch(name))
    return Path(name)


def run(args) -> int:
    import jaxselfeval as jse
    from jaxselfeval.configs import load_dataclass_config
    from jaxselfeval.evaluate.harness import EvalConfig
    from jaxselfeval.model.config import read_hf_config
    from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset
    from jaxselfeval.selfeval.reward_model import load_reward_model
    from jaxselfeval.selfeval.reward_train import train_reward_model
    from jaxselfeval.selfeval.train import SelfEvalConfig, train_selfeval

    dc = load_dataclass_config(DemoConfig, args.config, args.overrides)
    q = args.quick
    quick = QUICK if q else {"data": [], "selfeval": [], "eval": []}
    ecfg = load_dataclass_config(EvalConfig, dc.eval, dc.eval_overrides + quick["eval"])
    ecfg.validate()  # bad settings fail before any model is loaded (the second set's too)
    ecfg2 = (load_dataclass_config(EvalConfig, dc.eval, dc.eval_overrides + quick["eval"]
                                   + dc.second_eval) if dc.second_eval else None)
    if ecfg2 is not None:
        ecfg2.validate()
    out = Path(args.out or dc.out)
    out.mkdir(parents=True, exist_ok=True)
    prog = not args.no_progress
    t0 = time.time()
    base = base_model_dir(dc.model)
    log.info("stage 1/4: base model %s (%.2fM parameters)", base,
             jse.count_params(jse.abstract_model(read_hf_config(base))) / 1e6)

    _check_same_base(base, out)
    bcfg = load_dataclass_config(BuildConfig, dc.data, dc.data_overrides + quick["data"] + [
        f"model={base}", f"out_dir={out / 'data'}"])
    log.info("stage 2/4: capability dataset -> %s", bcfg.out_dir)
    build_dataset(bcfg, progress=prog)

    se_dir = out / "selfeval"
    hf = se_dir / "hf"
    if (hf / "selfeval.json").exists():
        log.info("stage 3/4: capability token already trained (%s)", hf)
        val = json.loads((hf / "selfeval.json").read_text())["validation"]
    else:
        log.info("stage 3/4: training the capability token -> %s", se_dir)
        overrides = dc.selfeval_overrides + [f"data_dir={bcfg.out_dir}", f"out_dir={se_dir}",
                                             f"export_dir={hf}"]
        scfg = load_dataclass_config(SelfEvalConfig, dc.selfeval, overrides)
        # --quick shortens training; a fitted token (steps 0) has none to shorten
        if quick["selfeval"] and scfg.steps:
            scfg = load_dataclass_config(SelfEvalConfig, dc.selfeval,
                                         overrides + quick["selfeval"])
        _, val = train_selfeval(scfg, progress=prog)

    rm = None
    if dc.reward_model:
        rm_dir = out / "reward_model"
        if (rm_dir / "hf" / "config.json").exists():
            log.info("stage 3/4: external reward-model baseline already trained (%s)", rm_dir)
        else:
            log.info("stage 3/4: training the external reward-model baseline -> %s", rm_dir)
            train_reward_model(bcfg.out_dir, str(base), str(rm_dir),
                               steps=10 if q else dc.reward_model_steps,
                               seq_len=dc.reward_model_seq_len, progress=prog)
        rm = load_reward_model(rm_dir / "hf")

    res = _evaluate(hf, ecfg, out / "eval", rm, prog, "stage 4/4")
    base_acc = _base_accuracy(base, out, res["config"], dc.base_samples, prog)
    text = _report(res, out / "eval", se_dir, val, base_acc, out)
    if ecfg2 is not None:
        res2 = _evaluate(hf, ecfg2, out / "eval_2", rm, prog, "stage 4/4, second held-out set")
        text += _second_set(res2, ecfg2)
    (out / "report.md").write_text(text)
    h = res["headline"]
    trained = _trained_sample_at_1(res, base_acc)
    print(f"sample@1 base {100 * base_acc['sample@1']:.1f}% -> trained {100 * trained:.1f}%")
    print(demo_summary(time.time() - t0, h, res["pool"], val, out / "report.md"))
    return 0


def demo_summary(seconds: float, h: dict, pool: dict, val: dict, report: Path) -> str:
    """The demo's closing line: the headline accuracies (a baseline that was not run is left
    out, never printed as 0%), the token's AUROC on the test pool and on validation."""
    parts = [f"one sample {100 * h['one_sample']:.1f}%",
             f"Best-of-N self-eval {100 * h['bon_self']:.1f}%"]
    for key, name in (("bon_rm", "by RM"), ("majority", "majority"),
                      ("bon_likelihood", "by log-prob"), ("adaptive_acc_at_1.2", "adaptive@1.2")):
        if h.get(key) is not None:
            parts.append(f"{name} {100 * h[key]:.1f}%")
    auroc = f"AUROC {pool['auroc']:.3f} (test pool)" if "auroc" in pool else "AUROC n/a"
    if "auroc_full" in val:
        auroc += f", {val['auroc_full']:.3f} (validation)"
    return f"demo done in {seconds:.0f}s: {', '.join(parts)}; {auroc}. Report: {report}"


def _evaluate(hf: Path, ecfg, ev_dir: Path, rm, prog: bool, stage: str) -> dict:
    """The evaluation of the trained model, resumed chunk by chunk: chunks already evaluated are
    read, not rerun, and results.json and the report are rebuilt from them by this version's
    code (a finished evaluation takes seconds)."""
    import jaxselfeval as jse
    from jaxselfeval.evaluate.harness import evaluate
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    log.info("%s: evaluating every strategy -> %s", stage, ev_dir)
    return evaluate(jse.load_pretrained(hf), load_tokenizer(hf),
                    get_task(ecfg.task, **ecfg.task_args), ecfg, ev_dir, progress=prog, rm=rm,
                    target=token_target(hf))


def _report(res: dict, ev_dir: Path, se_dir: Path, val: dict, base_acc: dict, out: Path) -> str:
    """The evaluation's report, the token's validation figures and the policy-damage check;
    the plots copied beside it."""
    from jaxselfeval.evaluate.report import sampling_label

    for f in ("accuracy_vs_samples.png", "accuracy_vs_tokens.png"):
        shutil.copy2(ev_dir / f, out / f)
    shutil.copy2(se_dir / "reliability.png", out / "reliability.png")
    trained = _trained_sample_at_1(res, base_acc)
    cal = "\n".join(f"| {k} | {v:.3f} |" for k, v in val.items() if isinstance(v, float))
    return ((ev_dir / "report.md").read_text() +
            "\n## Capability token (held-out prompts)\n\n| metric | value |\n| --- | --- |\n" + cal +
            "\n\n![reliability](reliability.png)\n\n## The policy after training\n\n"
            f"sample@1 ({sampling_label(res['config'])}, the first {base_acc['samples']} samples "
            f"of each of the same {base_acc['problems']} problems, under the same keys): base model {100 * base_acc['sample@1']:.1f}%, after capability-token "
            f"training {100 * trained:.1f}% ({100 * (trained - base_acc['sample@1']):+.1f} points; "
            "goal: within 2).\n")


def _second_set(res: dict, ecfg) -> str:
    """The second held-out set's headline figures, beside the first's in the report."""
    from jaxselfeval.evaluate.report import signal_lines, verdict

    h, n = res["headline"], res["config"]["n"]
    return (f"\n## A second held-out set ({res['summary']['one']['n']} other problems: "
            f"{ecfg.split} from {ecfg.skip}; eval_2/report.md)\n\n"
            + "\n".join(verdict(res)[2:] + signal_lines(h, n)) + "\n")


def _fingerprint(model_dir: Path) -> str:
    """sha256 over the directory's file names, sizes and first MiB (cheap for an 8B model too)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                h.update(f"{f.name}:{f.stat().st_size}:".encode() + fh.read(1 << 20))
    return h.hexdigest()


def _check_same_base(base: Path, out: Path):
    """Refuse to resume a demo directory made from another base model (its stages would be
    skipped and mixed with the new model's)."""
    from jaxselfeval.errors import JSEError

    path, fp = out / "base_model.json", _fingerprint(base)
    if path.exists():
        if json.loads(path.read_text())["fingerprint"] != fp:
            raise JSEError(f"{out} was made from another base model than {base}: remove it, or "
                           "pass --out NEW_DIR")
    elif any(out.iterdir()):
        raise JSEError(f"{out} holds files of an older demo (no base_model.json): remove it, or "
                       "pass --out NEW_DIR")
    else:
        from jaxselfeval.fileio import write_atomic

        write_atomic(path, json.dumps({"model": str(base), "fingerprint": fp}, indent=2))


def _trained_sample_at_1(res: dict, base_acc: dict) -> float:
    """The trained policy's sample@1 on the candidates the base model's check drew."""
    return float(np.mean(res["pool"]["sample_at_1_by_candidate"][:base_acc["samples"]]))


def _base_accuracy(base, out: Path, ecfg: dict, samples: int, progress: bool) -> dict:
    """sample@1 of the base model on the evaluated problems, the first `samples` candidates of
    each (0: all; cached in out/base_accuracy.json)."""
    path = out / "base_accuracy.json"
    n = min(samples or ecfg["n"], ecfg["n"])
    if path.exists():
        cached = json.loads(path.read_text())
        if ((cached["problems"], cached.get("skip", 0), cached["samples"], cached["temperature"],
             cached.get("top_p", 1.0)) == (ecfg["limit"], ecfg.get("skip", 0), n,
                                           ecfg["temperature"], ecfg.get("top_p", 1.0))):
            return cached
    import jaxselfeval as jse
    from jaxselfeval.evaluate.accuracy import sample_accuracy
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    log.info("base model sample@1 on the same %d problems (for the policy-damage check)",
             ecfg["limit"])
    res = sample_accuracy(jse.load_pretrained(base), load_tokenizer(base),
                          get_task(ecfg["task"], **ecfg.get("task_args", {})),
                          split=ecfg["split"], limit=ecfg["limit"], skip=ecfg.get("skip", 0),
                          n=n,
                          temperature=ecfg["temperature"], top_p=ecfg.get("top_p", 1.0),
                          max_new_tokens=ecfg["max_new_tokens"],
                          seed=ecfg["seed"], progress=progress)
    from jaxselfeval.fileio import write_atomic

    write_atomic(path, json.dumps(res, indent=2))
    return res
