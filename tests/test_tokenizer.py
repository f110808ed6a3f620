"""The embedded tokenizer: Llama 3 chat format, single-token Yes/No, offline round trip."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import jaxselfeval as jse  # noqa: E402
from jaxselfeval.tokenizer import (PROBE_QUESTION, SPECIALS, build_tokenizer,  # noqa: E402
                                   encode_chat, load_tokenizer, probe_token_ids, save_tokenizer)

TEXTS = ["Tom has 3 apples. He buys 4 more. How many apples does Tom have now?\n3 + 4 = 7\n#### 7"] * 50
H = "<|start_header_id|>{}<|end_header_id|>\n\n"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS, vocab_size=320)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tok")


def test_chat_format_matches_llama3(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "3 + 4 = 7\n#### 7"}, {"role": "user", "content": PROBE_QUESTION}]
    want = ("<|begin_of_text|>" + H.format("system") + "Be brief.<|eot_id|>" + H.format("user")
            + "Hi there<|eot_id|>" + H.format("assistant") + "3 + 4 = 7\n#### 7<|eot_id|>"
            + H.format("user") + PROBE_QUESTION + "<|eot_id|>" + H.format("assistant"))
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == want
    assert tok.apply_chat_template(msgs, tokenize=False) == want[:-len(H.format("assistant"))]
    ids = encode_chat(tok, msgs)
    assert tok.decode(ids) == want
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # no double BOS


def test_special_tokens(tok):
    ids = [tok.convert_tokens_to_ids(s) for s in SPECIALS]
    assert ids == list(range(len(SPECIALS)))  # specials first, in a fixed order
    for sp, i in zip(SPECIALS, ids):
        assert tok.encode(sp, add_special_tokens=False) == [i]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", "<|pad|>")
    assert tok.encode("Tom") == [tok.bos_token_id] + tok.encode("Tom", add_special_tokens=False)
    assert tok.decode(tok.encode("Tom has"), skip_special_tokens=True) == "Tom has"


def test_yes_no_single_tokens_and_digits(tok):
    y, n = probe_token_ids(tok)
    assert y != n and tok.bos_token_id not in (y, n)
    assert tok.encode("Yes", add_special_tokens=False) == [y]
    assert tok.encode("No", add_special_tokens=False) == [n]
    # and where the model produces them: right after the assistant header
    for word, i in (("Yes", y), ("No", n)):
        for ans in (word, word + "."):
            msgs = [{"role": "user", "content": PROBE_QUESTION}, {"role": "assistant", "content": ans}]
            prefix = encode_chat(tok, msgs[:1])
            full = encode_chat(tok, msgs, add_generation_prompt=False)
            assert full[:len(prefix)] == prefix and full[len(prefix)] == i
    assert len(tok.encode("1234", add_special_tokens=False)) == 4  # digits one by one
    assert len(tok) <= 320


def test_probe_token_ids_other_tokenizers():
    class Stub:  # a Llama-3-like encode: "Yes"/"No" single tokens; BOS only when asked
        def __init__(self, table):
            self.table = table

        def encode(self, w, add_special_tokens=True):
            return ([128000] if add_special_tokens else []) + self.table[w]

    assert probe_token_ids(Stub({"Yes": [9642], "No": [2822]})) == (9642, 2822)
    assert probe_token_ids(Stub({"Yes": [7, 8], "No": [9]})) == (7, 9)  # first token
    with pytest.raises(jse.JSEError, match="share their first token"):
        probe_token_ids(Stub({"Yes": [5, 1], "No": [5, 2]}))


def test_too_small_vocab_is_a_clear_error():
    with pytest.raises(jse.JSEError, match="'Yes' is not a single token: raise vocab_size"):
        build_tokenizer(TEXTS, vocab_size=262)  # 6 specials + 256 bytes: no merges


def test_save_load_offline_round_trip(tok, saved):
    files = {p.name for p in saved.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files
    cfg = json.loads((saved / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == tok.chat_template and cfg["eos_token"] == "<|eot_id|>"
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((saved / "special_tokens_map.json").read_text())["pad_token"] == "<|pad|>"

    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(saved), local_files_only=True)
    for s in ("Eva has 72 cards.\n72 * 4 = 288\n#### 288 ünïcode 日本", "  two  spaces\t\n", "$1,000.50"):
        assert again.decode(again.encode(s, add_special_tokens=False)) == s
    msgs = [{"role": "user", "content": "x"}]
    assert again.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                     return_dict=False) == encode_chat(tok, msgs)
    assert load_tokenizer(saved).get_vocab() == tok.get_vocab()
    with pytest.raises(jse.JSEError, match="no model directory .*missing'"):
        load_tokenizer(saved.parent / "missing")
    (saved.parent / "empty").mkdir()
    with pytest.raises(jse.JSEError, match="no usable tokenizer in"):
        load_tokenizer(saved.parent / "empty")


def test_deterministic_file(saved, tmp_path):
    again = save_tokenizer(build_tokenizer(TEXTS, vocab_size=320), tmp_path / "b")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (again / f).read_bytes() == (saved / f).read_bytes(), f


def test_rebuild_matches_shipped_tiny_base():
    """`train base` (configs/train_tiny.yaml) rebuilds the shipped tokenizer's vocab and merges."""
    from jaxselfeval.assets import ASSETS
    from jaxselfeval.tasks import get_task

    ship = json.loads((ASSETS / "tiny_base" / "tokenizer.json").read_text())
    train = get_task("arithmetic", seed=0, n_train=40000).examples("train")
    tok = build_tokenizer([e.question + "\n" + e.solution for e in train], 512)
    new = json.loads(tok.backend_tokenizer.to_str())
    assert new["model"]["vocab"] == ship["model"]["vocab"]
    assert new["model"]["merges"] == ship["model"]["merges"]
    assert probe_token_ids(tok) == (390, 389) and len(tok) == 428
