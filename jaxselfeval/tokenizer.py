"""The embedded model's tokenizer: byte-level BPE in Llama 3 Instruct form.

Same special tokens and chat template as Llama 3.1 Instruct, so everything downstream treats the
tiny model exactly like a real one. "Yes" and "No" (the probe answers) are single tokens.
Specials are ids 0..5 in SPECIALS' order; digits are single tokens; `encode(text)` prepends
<|begin_of_text|> like Llama 3 (chat templates render it themselves: encode chats with
`encode_chat` / `apply_chat_template`, and responses with add_special_tokens=False).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from jaxselfeval.errors import JSEError

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|pad|>"]
PROBE_QUESTION = 'Would you do better if you started over? ("Yes." or "No.")'

# The Llama 3 chat format (without the date preamble of Meta's template).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE on `texts` (+ the probe turn) -> PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # digits one by one (column arithmetic is learnable), then GPT-2 style byte-level words
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    extra = [PROBE_QUESTION, "Yes.", "No.", "Yes", "No"] * 200 + ["user assistant system"] * 200
    tok.train_from_iterator(list(texts) + extra, trainer=trainer)
    # like Llama 3: encode(text) (add_special_tokens=True) prepends <|begin_of_text|>
    bos = SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|pad|>", chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
    for w in ("Yes", "No"):
        if len(fast.encode(w, add_special_tokens=False)) != 1:
            raise JSEError(f"'{w}' is not a single token: raise vocab_size")
    return fast


def save_tokenizer(tok, out_dir) -> Path:
    """Save as a Llama 3.1 Instruct tokenizer directory: tokenizer.json, tokenizer_config.json
    (class PreTrainedTokenizerFast, with the chat_template), special_tokens_map.json and
    transformers 5's chat_template.jinja (the same template), readable by transformers 4 and 5."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tok.chat_template:
        cfg["chat_template"] = tok.chat_template
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    specials = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token")
                if getattr(tok, k, None)}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out


def load_tokenizer(path):
    """AutoTokenizer from an HF directory (offline); errors name the directory."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise JSEError(f"no model directory '{path}': give an HF directory (config.json, "
                       "*.safetensors, tokenizer.json), or run `jaxselfeval fetch smollm2` for one")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise JSEError(f"no usable tokenizer in '{path}' ({str(e).splitlines()[0][:120]})") from None


def probe_token_ids(tok) -> tuple[int, int]:
    """(yes_id, no_id): the first token of "Yes" and of "No" as the assistant would start."""
    ids = []
    for w in ("Yes", "No"):
        enc = tok.encode(w, add_special_tokens=False)
        if not enc:
            raise JSEError(f"tokenizer cannot encode '{w}'")
        ids.append(enc[0])
    if ids[0] == ids[1]:
        raise JSEError("'Yes' and 'No' share their first token: the probe cannot tell them apart")
    return ids[0], ids[1]


def encode_chat(tok, messages, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's chat template."""
    if not getattr(tok, "chat_template", None):
        raise JSEError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no chat_template: use an "
                       "Instruct model's tokenizer (tokenizer_config.json with chat_template)")
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                  tokenize=True, return_dict=False)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def assistant_turn_close(tok, content: str = "R") -> list[int]:
    """The token ids the chat template writes after an assistant turn's content (e.g. Llama 3:
    [<|eot_id|>]; ChatML: [<|im_end|>, "\\n"]), read off the template itself: the rendered
    [user, assistant] conversation is the generation prompt, then the content, then these. The
    first is the token generation stops at. JSEError when the template does not render that way."""
    user = [{"role": "user", "content": "Q"}]
    g = encode_chat(tok, user, add_generation_prompt=True)
    a = encode_chat(tok, user + [{"role": "assistant", "content": content}],
                    add_generation_prompt=False)
    c = [int(x) for x in tok.encode(content, add_special_tokens=False)]
    if a[:len(g)] != g or a[len(g):len(g) + len(c)] != c or len(a) == len(g) + len(c):
        raise JSEError(f"the chat template of {getattr(tok, 'name_or_path', '')!r} does not render "
                       "an assistant turn as its generation prompt + content + closing tokens: "
                       "cannot derive where a response ends")
    return a[len(g) + len(c):]
