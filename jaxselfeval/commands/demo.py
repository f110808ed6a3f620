"""`jaxselfeval demo`: the main job, end to end on the embedded tiny model."""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("--out", default="runs/demo", help="output directory")


def run(args) -> int:
    import numpy as np

    import jaxselfeval as jse

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = jse.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          rope_type="llama3", rope_factor=8.0,
                          rope_original_max_position_embeddings=64, max_position_embeddings=512)
    t0 = time.time()
    model = jse.create_model(cfg, seed=0)
    d = jse.save_pretrained(model, out / "random_tiny")
    again = jse.load_pretrained(d)
    toks = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)).astype(np.int32)
    diff = float(np.abs(np.asarray(model(toks)) - np.asarray(again(toks))).max())
    print(f"tiny Llama ({jse.count_params(model):,} params) exported to {d} and reloaded: "
          f"max |logit diff| {diff:.1e} in {time.time() - t0:.1f}s")
    return 0 if diff == 0.0 else 1
