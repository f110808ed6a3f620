"""Shared fixtures: tiny random Llama models saved by transformers (HF layout)."""

import os
import signal
import subprocess
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the run, shared by the test processes (pytest-xdist
# workers) and the subprocesses they start: many tests compile the same programs (the same tiny
# models, the sampler's pieces); the cache is keyed by the program, JAX version and flags.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"jaxselfeval-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))  # least recently used go
# 8 simulated CPU devices for sharding tests; must be set before jax initialises.
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

TINY_CONFIGS = {
    # name: transformers LlamaConfig kwargs
    "llama3_gqa2_untied": dict(vocab_size=97, hidden_size=64, intermediate_size=96,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               rope_parameters=dict(rope_type="llama3", rope_theta=500000.0,
                                                    factor=8.0, low_freq_factor=1.0,
                                                    high_freq_factor=4.0,
                                                    original_max_position_embeddings=16),
                               tie_word_embeddings=False, max_position_embeddings=256),
    "theta5e5_gqa4_tied": dict(vocab_size=131, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                               rope_parameters=dict(rope_type="default", rope_theta=500000.0),
                               tie_word_embeddings=True, max_position_embeddings=256),
    "mha_headdim_odd": dict(vocab_size=61, hidden_size=48, intermediate_size=80,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                            head_dim=32, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                            tie_word_embeddings=False, max_position_embeddings=256),
}


def make_hf_model(path, name="llama3_gqa2_untied", seed=0, **overrides):
    """Save a random transformers LlamaForCausalLM of a TINY_CONFIGS entry to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(TINY_CONFIGS[name], **overrides)
    cfg = LlamaConfig(**kw, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # default init has zero-ish norms; make every weight matter
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.08)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """name -> (dir, torch model) for every tiny config."""
    out = {}
    for name in TINY_CONFIGS:
        d = tmp_path_factory.mktemp(name)
        out[name] = (d, make_hf_model(d, name))
    return out


def make_tiny_selfeval_model(d):
    """A random 2-layer Llama with the embedded task's tokenizer, saved as an HF dir at d/hf."""
    from pathlib import Path

    import jaxselfeval as jse
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import build_tokenizer, save_tokenizer

    d = Path(d)
    task = get_task("arithmetic", n_train=300)
    tok = build_tokenizer([e.question + "\n" + e.solution for e in task.examples("train")], 300)
    save_tokenizer(tok, d / "tok")
    cfg = jse.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    jse.save_pretrained(jse.create_model(cfg, seed=5), d / "hf", tokenizer_dir=d / "tok")
    return d / "hf"


class WorkersHung(Exception):
    """Worker processes still running after their time (killed); args[0]: their log tails."""


def communicate_all(procs, timeout: int = 300, *, fail: bool = True) -> list[str]:
    """The processes' outputs once all have exited. If any is still running after `timeout`
    seconds (a hung collective), every one is killed (no orphans left to slow the rest of the
    suite) and the test fails with the tail of each log (fail=False: WorkersHung is raised)."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:  # the workers print every thread's Python stack on SIGUSR1: where it hung
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1)
        time.sleep(3)
        for p in procs:
            p.kill()
        tails = "\n---\n".join((p.communicate()[0] or "")[-2000:] for p in procs)
        if not fail:
            raise WorkersHung(tails) from None
        pytest.fail(f"worker processes still running after {timeout} s, killed:\n{tails}")
