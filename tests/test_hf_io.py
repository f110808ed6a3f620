"""HF directory export/import: transformers loads our export; load -> export -> load is exact."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaForCausalLM

import jaxselfeval as jse


def _params(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", ["llama3_gqa2_untied", "theta5e5_gqa4_tied"])
def test_export_loads_in_transformers_with_same_logits(hf_models, tmp_path, name):
    path, _ = hf_models[name]
    model = jse.load_pretrained(path)
    out = jse.save_pretrained(model, tmp_path / "export")
    tm = LlamaForCausalLM.from_pretrained(out).float().eval()
    toks = np.random.default_rng(0).integers(3, model.config.vocab_size, (2, 19)).astype(np.int32)
    with torch.no_grad():
        ref = tm(torch.tensor(toks, dtype=torch.long)).logits.numpy()
    assert np.abs(np.asarray(model(toks)) - ref).max() <= 1e-4


def test_load_export_load_is_bit_exact_and_sharded_files(hf_models, tmp_path):
    path, _ = hf_models["llama3_gqa2_untied"]
    a = jse.load_pretrained(path)
    # a tiny shard limit forces several files + index
    out = jse.save_pretrained(a, tmp_path / "new" / "e", max_shard_bytes=40_000)  # parent made
    assert sorted(p.name for p in out.parent.iterdir()) == ["e"]  # no temporary left beside it
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(idx["weight_map"].values())
    assert len(files) > 2 and all((out / f).exists() for f in files)
    b = jse.load_pretrained(out)
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def test_bf16_checkpoint_loads_into_f32_and_back(hf_models, tmp_path):
    path, _ = hf_models["theta5e5_gqa4_tied"]
    a = jse.load_pretrained(path, dtype="bfloat16")
    assert a.embed[...].dtype == jax.numpy.bfloat16
    out = jse.save_pretrained(a, tmp_path / "bf16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    b = jse.load_pretrained(out, dtype="float32")
    np.testing.assert_array_equal(np.asarray(a.wq[...], np.float32), np.asarray(b.wq[...]))


def test_published_llama31_config_form(tmp_path):
    """The `rope_scaling` + `rope_theta` form of published Llama 3.1 config.json files."""
    d = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
         "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 8, "rope_theta": 500000.0, "max_position_embeddings": 131072,
         "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
         "rope_type": "llama3"}, "tie_word_embeddings": False, "eos_token_id": [128001, 128008, 128009]}
    cfg = jse.LlamaConfig.from_hf_dict(d)
    assert (cfg.rope_type, cfg.rope_factor, cfg.rope_theta, cfg.head_dim) == ("llama3", 8.0, 5e5, 128)
    assert cfg.eos_ids == (128001, 128008, 128009)
    again = jse.LlamaConfig.from_hf_dict(cfg.to_hf_dict())
    assert again == cfg


def test_eight_b_param_count_without_allocating():
    from jaxselfeval.configs import load_model_config

    cfg = load_model_config("llama3_1_8b")
    model = jse.abstract_model(cfg)
    assert isinstance(model.wq.get_value(), jax.ShapeDtypeStruct)
    n = jse.count_params(model)
    assert round(n / 1e9, 2) == 8.03
    assert 1.2e9 < jse.count_params(jse.abstract_model(load_model_config("llama3_2_1b"))) < 1.3e9
    assert 3.1e9 < jse.count_params(jse.abstract_model(load_model_config("llama3_2_3b"))) < 3.3e9


def test_an_export_has_ordinary_permissions(hf_models, tmp_path):
    """An export is built in a temporary directory and renamed into place: it ends with the
    permissions of a new directory (0o777 less the umask), not mkdtemp's private 0o700."""
    import os
    import stat

    path, _ = next(iter(hf_models.values()))
    out = jse.save_pretrained(jse.load_pretrained(path), tmp_path / "export")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
