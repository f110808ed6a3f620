"""The reward-model head matches transformers' LlamaForSequenceClassification; export round trip."""

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from conftest import TINY_CONFIGS
from jaxselfeval.selfeval.reward_model import load_reward_model, save_reward_model


def _hf_rm(path):
    torch.manual_seed(0)
    cfg = LlamaConfig(**TINY_CONFIGS["llama3_gqa2_untied"], num_labels=1, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    m = LlamaForSequenceClassification(cfg).float().eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(0, 0.08) if "norm" not in n else p.uniform_(0.5, 1.5)
    m.save_pretrained(path)
    return m


def _batch():
    rng = np.random.default_rng(0)
    t = rng.integers(3, 97, (3, 14)).astype(np.int64)
    t[0, :5] = 0  # left padded
    t[2, 10:] = 0  # right padded
    return t


def test_scores_match_transformers_and_export(tmp_path):
    tm = _hf_rm(tmp_path / "rm")
    toks = _batch()
    mask = torch.tensor(toks != 0, dtype=torch.long)
    with torch.no_grad():
        ref = tm(torch.tensor(toks), attention_mask=mask).logits[:, 0].numpy()
    rm = load_reward_model(tmp_path / "rm")
    ours = np.asarray(rm.score(toks.astype(np.int32)))  # mask derived from pad_token_id
    assert np.abs(ours - ref).max() <= 1e-4
    out = save_reward_model(rm, tmp_path / "export")
    again = LlamaForSequenceClassification.from_pretrained(out).float().eval()
    with torch.no_grad():
        ref2 = again(torch.tensor(toks), attention_mask=mask).logits[:, 0].numpy()
    assert np.abs(ref2 - ref).max() <= 1e-5
