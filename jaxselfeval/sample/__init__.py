"""Sampling: prefill once, branch to N candidates sharing the prompt cache, decode, probe, prune."""

from jaxselfeval.sample.api import generate, self_evaluate
from jaxselfeval.sample.engine import Candidates, Engine, Prompts, bucket
from jaxselfeval.sample.probe import ProbeSpec, probe_spec
from jaxselfeval.sample.sampling import row_keys, sample_tokens

__all__ = ["generate", "self_evaluate", "Engine", "Candidates", "Prompts", "bucket", "ProbeSpec",
           "probe_spec", "row_keys", "sample_tokens"]
