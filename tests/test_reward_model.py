"""The reward model matches transformers' LlamaForSequenceClassification (pooling at the rightmost
non-pad token, left/right padding, no mask); export round trips through transformers."""

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

import jaxselfeval as jse
from conftest import TINY_CONFIGS, make_hf_model
from jaxselfeval.errors import JSEError
from jaxselfeval.selfeval.reward_model import (RewardModel, init_reward_model, load_reward_model,
                                               save_reward_model)

PAD = 0


@pytest.fixture(scope="module")
def hf_rm(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    cfg = LlamaConfig(**TINY_CONFIGS["llama3_gqa2_untied"], num_labels=1, pad_token_id=PAD,
                      bos_token_id=1, eos_token_id=2)
    m = LlamaForSequenceClassification(cfg).float().eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(0, 0.08) if "norm" not in n else p.uniform_(0.5, 1.5)
    m.save_pretrained(path)
    return path, m


def _batch():
    """tokens [5, 14] int64, mask [5, 14]: left-padded, unpadded, right-padded, a pad id inside
    the content, and a row whose last real token is the pad id (pad == eos, as many Llama RMs)."""
    rng = np.random.default_rng(0)
    t = rng.integers(3, 97, (5, 14)).astype(np.int64)
    m = np.ones_like(t)
    t[0, :5], m[0, :5] = PAD, 0
    t[2, 10:], m[2, 10:] = PAD, 0
    t[3, 4] = PAD  # real token (mask 1) that equals the pad id
    t[3, 9:], m[3, 9:] = PAD, 0
    t[4, 7] = PAD  # "eos" = pad, attended; transformers pools the token before it
    t[4, 8:], m[4, 8:] = PAD, 0
    return t, m


def _ref(model, toks, mask):
    with torch.no_grad():
        am = None if mask is None else torch.tensor(mask)
        return model(torch.tensor(toks), attention_mask=am).logits[:, 0].numpy()


def test_scores_match_transformers_on_padded_batch(hf_rm):
    path, tm = hf_rm
    toks, mask = _batch()
    rm = load_reward_model(path)
    assert rm.pad_token_id == PAD and rm.head.shape == (64, 1)
    ours = np.asarray(rm.score(toks.astype(np.int32), mask))
    ref = _ref(tm, toks, mask)
    assert ours.shape == (5,) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-4
    # the last-token rule matters: the mask's last 1 would give a different score on row 4
    mask_rule = RewardModel(rm.backbone, rm.head[...], pad_token_id=None)  # pools the last slot
    alt = np.asarray(mask_rule.score(toks[4:5, :8].astype(np.int32)))  # = the trailing pad id
    assert np.abs(alt[0] - ref[4]) > 1e-3
    # no attention mask: transformers lets every token attend (left pads included)
    ours_nm = np.asarray(rm.score(toks.astype(np.int32)))
    ref_nm = _ref(tm, toks, None)
    assert np.abs(ours_nm - ref_nm).max() <= 1e-4
    assert np.abs(ref_nm[0] - ref[0]) > 1e-3  # left pads visible -> a different score


def test_no_pad_token_single_row_ok_batch_error(hf_rm):
    path, _ = hf_rm
    rm = load_reward_model(path)
    toks, _ = _batch()
    bare = RewardModel(rm.backbone, rm.head[...], pad_token_id=None)
    one = toks[1:2].astype(np.int32)
    np.testing.assert_allclose(np.asarray(bare.score(one)), np.asarray(rm.score(one)), atol=1e-6)
    with pytest.raises(JSEError, match="needs a pad_token_id"):
        bare.score(toks.astype(np.int32))


def test_export_loads_in_transformers_with_same_scores(hf_rm, tmp_path):
    path, tm = hf_rm
    toks, mask = _batch()
    ref = _ref(tm, toks, mask)
    out = save_reward_model(load_reward_model(path), tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["pad_token_id"] == PAD
    again, info = LlamaForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert np.abs(_ref(again.float().eval(), toks, mask) - ref).max() <= 1e-5
    ours = np.asarray(load_reward_model(out).score(toks.astype(np.int32), mask))
    assert np.abs(ours - ref).max() <= 1e-4


def test_fresh_head_on_causal_lm_backbone_exports_sharded(tmp_path):
    make_hf_model(tmp_path / "lm")  # LlamaForCausalLM with an untied lm_head, pad_token_id 0
    with pytest.raises(JSEError, match="no score.weight"):
        load_reward_model(tmp_path / "lm")
    backbone = jse.load_pretrained(tmp_path / "lm")
    rm = init_reward_model(backbone, seed=3)
    assert rm.pad_token_id == 0 and rm.head.shape == (64, 1)
    assert float(np.std(np.asarray(rm.head[...]))) > 0.005
    toks, mask = _batch()
    ours = np.asarray(rm.score(toks.astype(np.int32), mask))
    out = save_reward_model(rm, tmp_path / "rm_export", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 2 and "lm_head.weight" not in index
    assert not (out / "model.safetensors").exists()
    hf, info = LlamaForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert np.abs(_ref(hf.float().eval(), toks, mask) - ours).max() <= 1e-4
