"""The embedded tokenizer: Llama 3 chat format, single-token Yes/No, offline round trip."""

import pytest

from jaxselfeval.tokenizer import (build_tokenizer, encode_chat, load_tokenizer, probe_token_ids,
                                   save_tokenizer)

TEXTS = ["Tom has 3 apples. He buys 4 more. How many apples does Tom have now?\n3 + 4 = 7\n#### 7"] * 50


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS, vocab_size=320)


def test_chat_format_matches_llama3(tok):
    msgs = [{"role": "user", "content": "Hi there"}]
    ids = encode_chat(tok, msgs)
    assert tok.decode(ids) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there"
                               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    for sp in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert len(tok.encode(sp, add_special_tokens=False)) == 1
    assert tok.eos_token == "<|eot_id|>"


def test_yes_no_single_tokens_and_digits(tok):
    y, n = probe_token_ids(tok)
    assert y != n
    assert tok.encode("Yes", add_special_tokens=False) == [y]
    assert tok.encode("No", add_special_tokens=False) == [n]
    assert len(tok.encode("1234", add_special_tokens=False)) == 4  # digits one by one


def test_save_load_offline_round_trip(tok, tmp_path):
    d = save_tokenizer(tok, tmp_path / "tok")
    again = load_tokenizer(d)
    s = "Eva has 72 cards.\n72 * 4 = 288\n#### 288 ünïcode"
    assert again.decode(again.encode(s, add_special_tokens=False)) == s
    assert encode_chat(again, [{"role": "user", "content": "x"}]) == encode_chat(tok, [{"role": "user", "content": "x"}])
    # deterministic
    assert build_tokenizer(TEXTS, vocab_size=320).get_vocab() == tok.get_vocab()
