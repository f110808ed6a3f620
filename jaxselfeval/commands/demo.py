"""`jaxselfeval demo`: the whole method on the shipped tiny model, resumable stage by stage.

1. base model   jaxselfeval/assets/tiny_base (trained by `jaxselfeval train base`)
2. data build   on-policy samples, verifier rewards, capability targets (+ truncations)
3. train        the capability token (probe position, soft targets) -> HF dir + calibration plot,
                and the external reward-model baseline on the same rewards
4. evaluate     every strategy on held-out problems -> runs/demo/report.md + plots
Re-running skips finished stages.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="a few prompts per stage (a smoke run of every stage, ~3 minutes)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import jaxselfeval as jse
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.configs import load_dataclass_config
    from jaxselfeval.evaluate.harness import EvalConfig, evaluate
    from jaxselfeval.evaluate.report import sampling_label, write_report
    from jaxselfeval.model.config import read_hf_config
    from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset
    from jaxselfeval.selfeval.reward_model import load_reward_model
    from jaxselfeval.selfeval.reward_train import train_reward_model
    from jaxselfeval.selfeval.train import SelfEvalConfig, train_selfeval
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prog = not args.no_progress
    t0 = time.time()
    base = default_model_dir()
    log.info("stage 1/4: base model %s (%.2fM parameters)", base,
             jse.count_params(jse.abstract_model(read_hf_config(base))) / 1e6)

    _check_same_base(base, out)
    q = args.quick
    small = ["splits={train: 40, validation: 20}", "n=4", "shard_prompts=20"] if q else []
    bcfg = load_dataclass_config(BuildConfig, "data_tiny", small + [f"model={base}",
                                                                   f"out_dir={out / 'data'}"])
    log.info("stage 2/4: capability dataset -> %s", bcfg.out_dir)
    build_dataset(bcfg, progress=prog)

    se_dir = out / "selfeval"
    hf = se_dir / "hf"
    if (hf / "selfeval.json").exists():
        log.info("stage 3/4: capability token already trained (%s)", hf)
        val = json.loads((hf / "selfeval.json").read_text())["validation"]
    else:
        log.info("stage 3/4: training the capability token -> %s", se_dir)
        scfg = load_dataclass_config(SelfEvalConfig, "selfeval_tiny", (
            ["steps=20", "eval_every=10"] if q else []) + [
            f"data_dir={bcfg.out_dir}", f"out_dir={se_dir}", f"export_dir={hf}"])
        _, val = train_selfeval(scfg, progress=prog)

    rm_dir = out / "reward_model"
    if (rm_dir / "hf" / "config.json").exists():
        log.info("stage 3/4: external reward-model baseline already trained (%s)", rm_dir)
    else:
        log.info("stage 3/4: training the external reward-model baseline -> %s", rm_dir)
        train_reward_model(bcfg.out_dir, str(base), str(rm_dir), steps=10 if q else 150,
                           progress=prog)
    rm = load_reward_model(rm_dir / "hf")

    ev_dir = out / "eval"
    if (ev_dir / "results.json").exists():
        log.info("stage 4/4: evaluation already done (%s)", ev_dir)
        res = json.loads((ev_dir / "results.json").read_text())
        write_report(res, ev_dir)  # the report follows this version's code
    else:
        log.info("stage 4/4: evaluating every strategy -> %s", ev_dir)
        ecfg = load_dataclass_config(EvalConfig, "eval_tiny", [
            "limit=24", "batch_prompts=24", "n=8", "rounds=[1,1,2,4]",
            "round_temperatures=[0.0,0.5,0.5,0.5]"] if q else [])
        ecfg.validate()
        res = evaluate(jse.load_pretrained(hf), load_tokenizer(hf),
                       get_task(ecfg.task, **ecfg.task_args), ecfg,
                       ev_dir, progress=prog, rm=rm)
    base_acc = _base_accuracy(base, out, res["config"], prog)
    trained = res["pool"]["sample_at_1"]
    for f in ("accuracy_vs_samples.png", "accuracy_vs_tokens.png"):
        shutil.copy2(ev_dir / f, out / f)
    shutil.copy2(se_dir / "reliability.png", out / "reliability.png")
    cal = "\n".join(f"| {k} | {v:.3f} |" for k, v in val.items() if isinstance(v, float))
    text = ((ev_dir / "report.md").read_text() +
            "\n## Capability token (held-out prompts)\n\n| metric | value |\n| --- | --- |\n" + cal +
            "\n\n![reliability](reliability.png)\n\n## The policy after training\n\n"
            f"sample@1 ({sampling_label(res['config'])}, {res['pool']['samples']} samples of the same problems): base model "
            f"{100 * base_acc['sample@1']:.1f}%, after capability-token training {100 * trained:.1f}% "
            f"({100 * (trained - base_acc['sample@1']):+.1f} points; goal: within 2).\n")
    (out / "report.md").write_text(text)
    h = res["headline"]
    print(f"sample@1 base {100 * base_acc['sample@1']:.1f}% -> trained {100 * trained:.1f}%")
    print(f"demo done in {time.time() - t0:.0f}s: one sample {100 * h['one_sample']:.1f}%, "
          f"Best-of-N self-eval {100 * h['bon16_self']:.1f}%, by RM {100 * (h['bon16_rm'] or 0):.1f}%, "
          f"majority {100 * h['majority']:.1f}%, "
          f"adaptive@1.2 {100 * (h['adaptive_acc_at_1.2'] or 0):.1f}%; AUROC "
          f"{val.get('auroc_full', float('nan')):.3f}. Report: {out / 'report.md'}")
    return 0


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


def _base_accuracy(base, out: Path, ecfg: dict, progress: bool) -> dict:
    """sample@1 of the base model on the evaluated problems (cached in out/base_accuracy.json)."""
    path = out / "base_accuracy.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if ((cached["problems"], cached["samples"], cached["temperature"], cached.get("top_p", 1.0))
                == (ecfg["limit"], ecfg["n"], ecfg["temperature"], ecfg.get("top_p", 1.0))):
            return cached
    import jaxselfeval as jse
    from jaxselfeval.evaluate.accuracy import sample_accuracy
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    log.info("base model sample@1 on the same %d problems (for the policy-damage check)",
             ecfg["limit"])
    res = sample_accuracy(jse.load_pretrained(base), load_tokenizer(base), get_task(ecfg["task"], **ecfg.get("task_args", {})),
                          split=ecfg["split"], limit=ecfg["limit"], n=ecfg["n"],
                          temperature=ecfg["temperature"], top_p=ecfg.get("top_p", 1.0),
                          max_new_tokens=ecfg["max_new_tokens"],
                          seed=ecfg["seed"], progress=progress)
    from jaxselfeval.fileio import write_atomic

    write_atomic(path, json.dumps(res, indent=2))
    return res
