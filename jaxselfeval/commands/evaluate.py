"""`jaxselfeval eval`: every strategy on a task split -> results.json, report.md, plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--model", default=None, help="HF model directory (default: the shipped tiny base)")
    p.add_argument("--task", default="arithmetic", help="arithmetic | gsm8k")
    p.add_argument("--config", default=None,
                   help="YAML of eval settings, a path or configs/NAME (e.g. eval_tiny: the demo's); "
                        "key=value overrides apply on top")
    p.add_argument("--out", default="runs/eval",
                   help="output directory; each finished chunk of prompts is kept in OUT/chunks, so "
                        "re-running after a kill resumes (on several hosts: a directory all see)")
    from jaxselfeval.configs import describe_defaults
    from jaxselfeval.evaluate.harness import EvalConfig

    p.add_argument("overrides", nargs="*", help="key=value settings: limit problems, task_args.seed=1 for "
                   "other problems of the task, n samples for "
                   "Best-of-n, adaptive rounds / round_temperatures / threshold (and the sweep's "
                   "thresholds), prune_at token counts x keep_fractions for pruning, combined_keep "
                   "for adaptive + pruning (defaults: " + describe_defaults(EvalConfig) + ")")
    p.add_argument("--reward-model", default=None,
                   help="HF LlamaForSequenceClassification directory on the policy's tokenizer: "
                        "adds the Best-of-n-by-reward-model baseline to the report")
    p.add_argument("--no-progress", action="store_true")
    from jaxselfeval.commands.placement import add_placement_arguments

    add_placement_arguments(p)


def check_selfeval_trained(model_dir) -> bool:
    if not (Path(model_dir) / "selfeval.json").exists():
        log.warning("%s was never self-eval-trained (no selfeval.json): its self-evaluation scores "
                    "are meaningless; train it with `jaxselfeval train selfeval`", model_dir)
        return False
    return True


def token_target(model_dir) -> str:
    """What a model's token was trained to predict (its selfeval.json's "target")."""
    f = Path(model_dir) / "selfeval.json"
    return json.loads(f.read_text()).get("target", "capability") if f.exists() else "capability"


def run(args) -> int:
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.commands.placement import load_model, load_rm
    from jaxselfeval.configs import load_dataclass_config
    from jaxselfeval.evaluate.harness import EvalConfig, evaluate
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    path = args.model or str(default_model_dir())
    cfg = load_dataclass_config(EvalConfig, args.config, args.overrides,
                                defaults={"task": args.task})
    cfg.validate()
    tok = load_tokenizer(path)  # a missing directory is named before anything else
    check_selfeval_trained(path)
    rm = load_rm(args.reward_model, tok, args) if args.reward_model else None
    model = load_model(path, args)
    res = evaluate(model, tok, get_task(cfg.task, **cfg.task_args), cfg, args.out, progress=not args.no_progress,
                   rm=rm, target=token_target(path))
    print((Path(args.out) / "report.md").read_text())
    del res
    return 0
