"""Benchmarks (`jaxselfeval bench NAME`): side-by-side ratios measured in one run, never timed tests.

Each module in BENCHMARKS defines `add_arguments(parser)` and `run(args) -> int`.
"""

BENCHMARKS = {
    "sampler": ("jaxselfeval.bench.sampler", "sampler tokens/s vs transformers; prefill+branch; probe cost; shared cache"),
    "prune": ("jaxselfeval.bench.prune", "Best-of-n in full vs pruned early, wall time split into decode and probe"),
    "train": ("jaxselfeval.bench.train", "training tokens/s and MFU against the chip's dense bf16 peak (datasheet or measured)"),
}
