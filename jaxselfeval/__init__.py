"""jaxselfeval: adaptive inference-time compute for Llama in JAX (arXiv 2410.02725).

    import jaxselfeval as jse
    model = jse.load_pretrained("hf_dir", dtype="float32")
    logits = model(tokens)                 # int32 [batch, seq] -> f32 [batch, seq, vocab]
    jse.save_pretrained(model, "out_dir")  # HF layout
"""

from jaxselfeval.errors import JSEError
from jaxselfeval.hf_io import load_pretrained, save_pretrained
from jaxselfeval.model import (AttentionContext, KVCache, Llama, LlamaConfig, abstract_model,
                               count_params, create_model, init_cache)

__all__ = ["JSEError", "load_pretrained", "save_pretrained", "AttentionContext", "KVCache", "Llama",
           "LlamaConfig", "abstract_model", "count_params", "create_model", "init_cache"]


def __getattr__(name):  # later layers (sampler, strategies) import lazily to keep start-up light
    import importlib

    lazy = {
        "generate": "jaxselfeval.sample",
        "self_evaluate": "jaxselfeval.sample",
    }
    if name in lazy:
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'jaxselfeval' has no attribute '{name}'")
