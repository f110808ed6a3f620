"""`jaxselfeval train base|...`: training jobs driven by a YAML config + key=value overrides."""

from __future__ import annotations


def add_arguments(p):
    from jaxselfeval.configs import describe_defaults
    from jaxselfeval.selfeval.train import SelfEvalConfig
    from jaxselfeval.train.config import TrainConfig

    sub = p.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    b = sub.add_parser("base", help="train the tiny base model from scratch on the embedded task",
                       description="Train a small Llama from scratch on a task (LM loss on answers), "
                                   "export an HF directory, then print sample@1 / pass@N on held-out "
                                   "problems by difficulty. Resumes from out_dir if present; SIGTERM "
                                   "saves a checkpoint and stops.")
    b.add_argument("--config", default="configs/train_tiny.yaml", help="YAML train config")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. "
                   "steps=200 (settings a --config file does not set: " + describe_defaults(TrainConfig) + ")")
    b.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("selfeval", help="fine-tune the capability token on a built dataset",
                       description="Fine-tune the probe position (soft cross-entropy on Yes/No) "
                                   "plus what keeps the policy where it was (kl_weight: KL to the "
                                   "frozen base, with LoRA; lm_weight: LM loss on the samples); "
                                   "validates AUROC/Brier/ECE; exports HF.")
    e.add_argument("--config", default="configs/selfeval_tiny.yaml", help="YAML config")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. "
                   "steps=200 (settings a --config file does not set: " + describe_defaults(SelfEvalConfig) + ")")
    e.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    if args.train_kind == "selfeval":
        import json

        from jaxselfeval.configs import load_dataclass_config
        from jaxselfeval.selfeval.train import SelfEvalConfig, train_selfeval

        cfg = load_dataclass_config(SelfEvalConfig, args.config, args.overrides)
        out, final = train_selfeval(cfg, progress=not args.no_progress)
        print(json.dumps({k: round(v, 4) for k, v in final.items()}, indent=2))
        print(f"wrote {out}")
        return 0
    from jaxselfeval.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.train_kind == "base":
        from jaxselfeval.evaluate.accuracy import format_accuracy
        from jaxselfeval.train.base import train_base

        out, summary = train_base(cfg, progress=not args.no_progress)
        print(f"trained {summary['steps']} steps ({summary['params'] / 1e6:.2f}M parameters) in "
              f"{summary['train_seconds']:.0f}s this run; final loss {summary['final_loss']}")
        if "accuracy" in summary:
            acc = summary["accuracy"]
            print(f"held-out {cfg.task} ({acc['problems']} {cfg.eval_split} problems, "
                  f"{acc['samples']} samples each at T=1.0):")
            print(format_accuracy(acc))
        print(f"wrote {out}")
    return 0
