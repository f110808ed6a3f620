"""`jaxselfeval data build`: the on-policy capability dataset (resumable)."""

from __future__ import annotations


def add_arguments(p):
    from jaxselfeval.configs import describe_defaults
    from jaxselfeval.selfeval.dataset import BuildConfig

    sub = p.add_subparsers(dest="data_cmd", metavar="CMD", required=True)
    b = sub.add_parser("build", help="sample n responses per prompt, verify, label, write TFDS",
                       description="Build the capability dataset on-policy. Shards are written "
                                   "atomically; re-running resumes where a killed build stopped.")
    b.add_argument("--config", default="configs/data_tiny.yaml", help="YAML build config")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. n=16 "
                   "(settings a --config file does not set: " + describe_defaults(BuildConfig) + ")")
    b.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from jaxselfeval.configs import load_dataclass_config
    from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset, load_rows

    cfg = load_dataclass_config(BuildConfig, args.config, args.overrides)
    out = build_dataset(cfg, progress=not args.no_progress)
    counts = {s: len(load_rows(out, s)) for s in cfg.splits}
    print(f"wrote {out}: rows per split {counts}")
    return 0
