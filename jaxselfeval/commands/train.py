"""`jaxselfeval train base|...`: training jobs driven by a YAML config + key=value overrides."""

from __future__ import annotations


def add_arguments(p):
    sub = p.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    b = sub.add_parser("base", help="train the tiny base model from scratch on the embedded task",
                       description="Train a small Llama from scratch on a task (LM loss on answers), "
                                   "then export an HF directory. Resumes from out_dir if present.")
    b.add_argument("--config", default="configs/train_tiny.yaml", help="YAML train config")
    b.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=200")
    b.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from jaxselfeval.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.train_kind == "base":
        from jaxselfeval.train.base import train_base

        out = train_base(cfg, progress=not args.no_progress)
        print(f"wrote {out}")
    return 0
