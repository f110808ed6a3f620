"""The Llama port: config, RoPE, attention, KV cache, NNX model."""

from jaxselfeval.model.cache import KVCache, init_cache
from jaxselfeval.model.config import LlamaConfig, read_hf_config
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.model.llama import Llama, abstract_model, count_params, create_model

__all__ = ["AttentionContext", "KVCache", "init_cache", "LlamaConfig", "read_hf_config", "Llama",
           "abstract_model", "count_params", "create_model"]
