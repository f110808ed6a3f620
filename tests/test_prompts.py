"""Prompt files for reward-model-scored data: bad lines, too-long prompts, no chat template."""

import json
import logging

import pytest

from jaxselfeval.errors import JSEError
from jaxselfeval.selfeval.prompts import load_prompts, read_prompt_file

TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<s> assistant : {% endif %}")


def _tokenizer(chat_template=TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<s>", "</s>", ":", "user", "assistant", "system", "hi", "there",
             "what", "is", "two", "plus", "long"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"chat_template": chat_template} if chat_template else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>", **kw)


def _write(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


GOOD = [{"prompt": "hi there", "id": "a"},
        {"messages": [{"role": "system", "content": "hi"},
                      {"role": "user", "content": "what is two plus two"}]},
        {"prompt": "long " * 30}]


def test_reads_both_forms_and_tokenizes_with_the_template(tmp_path):
    f = _write(tmp_path / "p.jsonl", GOOD[:2] + [""])  # a trailing blank line is fine
    ps = load_prompts(f, _tokenizer(), max_prompt_len=64)
    assert len(ps) == 2 and ps.line == [1, 2] and ps.meta == [{"id": "a"}, {}]
    assert ps.messages[0] == [{"role": "user", "content": "hi there"}]
    tok = _tokenizer()
    assert tok.decode(ps.token_ids[0]) == "<s> user : hi there </s> <s> assistant :"
    assert ps.skipped_bad == 0 and ps.skipped_too_long == 0


@pytest.mark.parametrize("bad,why", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": "hi"}', 'exactly one of "prompt"'),
    ('{"prompt": ""}', "non-empty string"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
     "last turn"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "role 'bot'"),
])
def test_malformed_line_names_file_line_and_skip_flag(tmp_path, bad, why):
    f = _write(tmp_path / "p.jsonl", [GOOD[0], "", bad, GOOD[1]])
    with pytest.raises(JSEError) as e:
        load_prompts(f, _tokenizer(), max_prompt_len=64)
    msg = str(e.value)
    assert f"{f}:3:" in msg and why in msg and "skip_bad_lines=True" in msg
    assert "\n" not in msg


def test_skip_bad_lines_keeps_the_rest_and_counts(tmp_path, caplog):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b"\n".join([json.dumps(GOOD[0]).encode(), b"{oops", b'{"prompt": "\xff\xfe"}',
                              json.dumps(GOOD[1]).encode()]) + b"\n")  # line 3: invalid UTF-8
    with pytest.raises(JSEError, match=":2: malformed prompt line: not valid JSON"):
        read_prompt_file(f)
    with caplog.at_level(logging.WARNING):
        ps = load_prompts(f, _tokenizer(), max_prompt_len=64, skip_bad_lines=True)
    assert len(ps) == 2 and ps.line == [1, 4] and ps.skipped_bad == 2
    assert "skipped 2 malformed line(s)" in caplog.text and ":3: skipped" in caplog.text
    assert "not valid UTF-8" in caplog.text
    msgs, lines, _, bad = read_prompt_file(f, skip_bad_lines=True)
    assert lines == [1, 4] and bad == 2 and msgs[1][-1]["content"] == "what is two plus two"


def test_too_long_prompts_skipped_and_counted_or_error(tmp_path, caplog):
    f = _write(tmp_path / "p.jsonl", GOOD + [GOOD[2]])
    with caplog.at_level(logging.WARNING):
        ps = load_prompts(f, _tokenizer(), max_prompt_len=20)
    assert len(ps) == 2 and ps.line == [1, 2] and ps.skipped_too_long == 2
    assert "skipped 2 prompt(s) over max_prompt_len=20" in caplog.text
    assert max(len(t) for t in ps.token_ids) <= 20
    with pytest.raises(JSEError, match=r":3: prompt is \d+ tokens, over max_prompt_len=20"):
        load_prompts(f, _tokenizer(), max_prompt_len=20, on_too_long="error")
    with pytest.raises(JSEError, match="on_too_long='truncate'"):
        load_prompts(f, _tokenizer(), max_prompt_len=20, on_too_long="truncate")
    with pytest.raises(JSEError, match="no usable prompts"):
        load_prompts(f, _tokenizer(), max_prompt_len=3)


def test_tokenizer_without_chat_template_is_one_clear_error(tmp_path):
    f = _write(tmp_path / "p.jsonl", GOOD[:1])
    tok = _tokenizer(chat_template=None)
    tok.save_pretrained(tmp_path / "base_tok")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "base_tok"), local_files_only=True)
    with pytest.raises(JSEError) as e:
        load_prompts(f, loaded, max_prompt_len=64)
    msg = str(e.value)
    assert str(tmp_path / "base_tok") in msg and "chat_template" in msg and "Instruct" in msg
    with pytest.raises(JSEError, match="tokenizer 'my/tok' has no chat_template"):
        load_prompts(f, tok, max_prompt_len=64, tokenizer_dir="my/tok")


def test_missing_file(tmp_path):
    with pytest.raises(JSEError, match="does not exist"):
        read_prompt_file(tmp_path / "nope.jsonl")
