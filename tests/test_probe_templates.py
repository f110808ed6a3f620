"""The probe scores exactly the text the chat template renders, for the Llama 3 template and for
ChatML (SmolLM2's: a turn ends with <|im_end|> then "\\n"): the sampler's probe (Engine.probe), the
probe text of training rows (selfeval.train.encode_rows) and self_evaluate, for finished and for
truncated responses."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.sample import Engine, probe_spec
from jaxselfeval.selfeval.rows import encode_rows
from jaxselfeval.tokenizer import PROBE_QUESTION, encode_chat

# SmolLM2-135M-Instruct's template, as its GGUF metadata spells it
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXTS = ["What is 3 + 4?", "3 + 4 = 7\n#### 7", "Tom has 3 apples and buys 5 more.",
         PROBE_QUESTION, "Yes.", "No.", "user assistant system"]


def chatml_tokenizer():
    """A small byte-level BPE with ChatML specials and SmolLM2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(TEXTS * 100, trainer=trainers.BpeTrainer(
        vocab_size=330, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>", chat_template=CHATML)


@pytest.fixture(scope="module", params=["llama3", "chatml"])
def tok(request):
    if request.param == "llama3":
        from jaxselfeval.tokenizer import build_tokenizer

        return build_tokenizer(TEXTS * 50, vocab_size=330)
    return chatml_tokenizer()


def template_text(tok, question, answer):
    """What the template renders for [user, assistant: answer, user: probe] + generation prompt."""
    return encode_chat(tok, [{"role": "user", "content": question},
                             {"role": "assistant", "content": answer},
                             {"role": "user", "content": PROBE_QUESTION}])


def cases(tok):
    """(prompt ids, response ids, the template's own rendering) for a finished and a truncated
    response."""
    q = "Tom has 3 apples and buys 5 more."
    prompt = encode_chat(tok, [{"role": "user", "content": q}])
    body = tok.encode("3 + 4 = 7\n#### 7", add_special_tokens=False)
    spec = probe_spec(tok)
    cut = body[:len(body) // 2]
    assert tok.encode(tok.decode(cut), add_special_tokens=False) == cut  # a clean prefix
    return [(prompt, body + [spec.eot], template_text(tok, q, tok.decode(body))),
            (prompt, cut, template_text(tok, q, tok.decode(cut)))]


def test_sft_rows_end_with_the_template_stop_token(tok):
    """Supervised rows end where the template ends an assistant turn (ChatML: <|im_end|>, not
    Llama 3's <|eot_id|>, which a ChatML vocabulary lacks), and that token is trained."""
    from jaxselfeval.train.data import encode_segments

    msgs = [{"role": "user", "content": "What is 3 + 4?"}]
    toks, mask, _ = encode_segments(tok, [(msgs, [("3 + 4 = 7\n#### 7", True)])], 256,
                                    train_eot=True)
    n = int((mask[0] > 0).nonzero()[0].max()) + 1  # last trained position + 1: the stop token
    assert toks[0, n] == tok.eos_token_id == probe_spec(tok).eot
    assert list(toks[0, :n + 1]) == encode_chat(tok, msgs + [
        {"role": "assistant", "content": "3 + 4 = 7\n#### 7"}])[:n + 1]


def test_eot_is_the_tokenizer_stop_token(tok):
    assert probe_spec(tok).eot == tok.eos_token_id


def test_training_rows_and_after_equal_the_template(tok):
    spec = probe_spec(tok)
    for prompt, resp, want in cases(tok):
        assert prompt + resp + spec.after(resp) == want
        rows = [{"prompt_ids": prompt, "response_ids": resp, "target": 0.5,
                 "truncation": int(resp[-1] != spec.eot)}]
        toks, _, last, _, _ = encode_rows(rows, spec, seq_len=256)
        assert toks[0, :last[0] + 1].tolist() == want


def _score(model, ids, spec):
    lg = np.asarray(model(jnp.asarray([ids])))[0, -1].astype(np.float64)
    p = np.exp(lg - lg.max())
    return p[spec.no] / (p[spec.yes] + p[spec.no])


def test_sampler_probe_scores_the_template_text(tok):
    """Engine.probe on finished and truncated rows == a plain forward over the template's text."""
    spec = probe_spec(tok)
    cfg = jse.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, rope_theta=10000.0,
                          eos_token_id=spec.eot, bos_token_id=None)
    m = jse.create_model(cfg, seed=3)
    # make the stop token likely (about a third of the rows finish within 8 tokens): a constant
    # embedding dimension read by the stop token's output column only
    m.embed.value = m.embed.value.at[:, 0].add(4.0)
    m.lm_head.value = m.lm_head.value.at[0, :].set(0.0).at[0, spec.eot].set(0.7)
    q = "What is 3 + 4?"
    prompt = encode_chat(tok, [{"role": "user", "content": q}])
    eng = Engine(m, seed=1, stop_ids=(spec.eot,))
    P = eng.prefill([prompt])
    C = eng.decode(P, eng.branch(P, 16, 8), until=8)
    scores = np.asarray(eng.probe(P, C, spec))
    done = np.asarray(C.done)
    assert 0 < done.sum() < len(done)  # both kinds of row are probed
    checked = 0
    for i, out in enumerate(Engine.outputs(C)):
        seq = prompt + out + spec.after(out)
        np.testing.assert_allclose(scores[i], _score(m, seq, spec), atol=2e-5)
        body = out[:-1] if done[i] else out
        if tok.encode(tok.decode(body), add_special_tokens=False) == body:  # re-tokenizes as is
            assert seq == template_text(tok, q, tok.decode(body))
            checked += 1
    assert checked >= 1
    api = jse.self_evaluate(m, tok, [prompt] * len(done), Engine.outputs(C))
    np.testing.assert_allclose(scores, api, atol=2e-5)
