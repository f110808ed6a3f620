"""`jaxselfeval bench NAME`: run one benchmark (see jaxselfeval.bench.BENCHMARKS)."""

from __future__ import annotations

import importlib

from jaxselfeval.fileio import check_file_target


def add_arguments(p):
    from jaxselfeval.bench import BENCHMARKS

    sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (mod, help_) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_bench_module=mod)
        try:
            importlib.import_module(mod).add_arguments(sp)
        except ModuleNotFoundError:  # benchmark not written yet
            pass


def run(args) -> int:
    if getattr(args, "out", None):  # refused now, not after minutes of timing
        check_file_target(args.out)
    return int(importlib.import_module(args._bench_module).run(args) or 0)
