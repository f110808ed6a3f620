"""Prompts for reward-model-scored data: a JSONL file of user turns.

Each non-blank line is one prompt, either
    {"prompt": "How do I ...?"}                                   (one user turn), or
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ..., {"role": "user", ...}]}
(a conversation ending with a user turn; the model writes the next assistant turn). Other keys
(e.g. "id") are kept in `PromptSet.meta`. Prompts are rendered with the tokenizer's chat template
(generation prompt added).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from jaxselfeval.errors import JSEError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class PromptSet:
    """messages: one conversation per prompt; token_ids: its chat-template ids (generation prompt
    included); line: its 1-based line in the file; meta: the line's other keys."""

    path: str
    messages: list[list[dict]]
    token_ids: list[list[int]]
    line: list[int]
    meta: list[dict]
    skipped_bad: int = 0  # malformed lines skipped (skip_bad_lines=True)
    skipped_too_long: int = 0  # prompts over max_prompt_len skipped (on_too_long="skip")

    def __len__(self) -> int:
        return len(self.messages)


def parse_prompt_line(text: str) -> tuple[list[dict], dict]:
    """One JSONL line -> (messages, other keys). Raises ValueError saying what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if ("prompt" in obj) == ("messages" in obj):
        raise ValueError('needs exactly one of "prompt" (a string) or "messages" (a list of turns)')
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "messages")}
    if "prompt" in obj:
        p = obj["prompt"]
        if not isinstance(p, str) or not p.strip():
            raise ValueError('"prompt" must be a non-empty string')
        return [{"role": "user", "content": p}], meta
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise ValueError('"messages" must be a non-empty list of {"role", "content"} turns')
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f'turn {i} of "messages" must be an object with a string "content"')
        if m.get("role") not in ROLES:
            raise ValueError(f'turn {i} has role {m.get("role")!r}: use one of {", ".join(ROLES)}')
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError('the last turn of "messages" must be a user turn (the model answers it)')
    return out, meta


def read_prompt_file(path, *, skip_bad_lines: bool = False) -> tuple[list, list, list, int]:
    """-> (messages per prompt, 1-based line numbers, meta dicts, number of bad lines skipped).

    A malformed line is a JSEError naming the file and line, unless `skip_bad_lines` (then it
    is counted, logged and left out). Blank lines are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise JSEError(f"prompt file '{path}' does not exist: give a JSONL file of "
                       '{"prompt": ...} or {"messages": [...]} lines')
    msgs, lines, metas, bad = [], [], [], 0
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"not valid UTF-8 (byte {e.start})") from None
                m, meta = parse_prompt_line(text)
            except ValueError as e:
                if not skip_bad_lines:
                    raise JSEError(f"{path}:{no}: malformed prompt line: {e}; fix the line or pass "
                                   "skip_bad_lines=True to skip bad lines") from None
                bad += 1
                log.warning("%s:%d: skipped malformed prompt line: %s", path, no, e)
                continue
            msgs.append(m)
            lines.append(no)
            metas.append(meta)
    if bad:
        log.warning("%s: skipped %d malformed line(s), kept %d prompt(s)", path, bad, len(msgs))
    return msgs, lines, metas, bad


def tokenizer_name(tokenizer, tokenizer_dir=None) -> str:
    return str(tokenizer_dir or getattr(tokenizer, "name_or_path", "") or "<in-memory tokenizer>")


def require_chat_template(tokenizer, tokenizer_dir=None) -> None:
    """JSEError unless the tokenizer has a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise JSEError(f"tokenizer '{tokenizer_name(tokenizer, tokenizer_dir)}' has no chat_template:"
                       " prompts are rendered as chat turns, so use a tokenizer that has one (e.g. "
                       "an Instruct model's tokenizer_config.json / chat_template.jinja)")


def encode_messages(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template token ids of one conversation, assistant generation prompt appended."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(x) for x in out]


def load_prompts(path, tokenizer, *, max_prompt_len: int, on_too_long: str = "skip",
                 skip_bad_lines: bool = False, tokenizer_dir=None) -> PromptSet:
    """Read and tokenize a prompt file.

    max_prompt_len: the most prompt tokens that fit (the model context minus max_new_tokens).
    on_too_long: "skip" (count, log and leave out) or "error" (JSEError naming the line).
    skip_bad_lines: leave out malformed lines (counted) instead of raising.
    """
    if on_too_long not in ("skip", "error"):
        raise JSEError(f"on_too_long={on_too_long!r}: use 'skip' or 'error'")
    if int(max_prompt_len) <= 0:
        raise JSEError(f"max_prompt_len must be positive, got {max_prompt_len}")
    require_chat_template(tokenizer, tokenizer_dir)
    msgs, lines, metas, bad = read_prompt_file(path, skip_bad_lines=skip_bad_lines)
    ps = PromptSet(str(path), [], [], [], [], skipped_bad=bad)
    for m, no, meta in zip(msgs, lines, metas):
        ids = encode_messages(tokenizer, m)
        if len(ids) > max_prompt_len:
            if on_too_long == "error":
                raise JSEError(f"{path}:{no}: prompt is {len(ids)} tokens, over max_prompt_len="
                               f"{max_prompt_len}; shorten it, raise max_prompt_len (context minus "
                               "max_new_tokens) or pass on_too_long='skip'")
            ps.skipped_too_long += 1
            continue
        ps.messages.append(m)
        ps.token_ids.append(ids)
        ps.line.append(no)
        ps.meta.append(meta)
    if ps.skipped_too_long:
        log.warning("%s: skipped %d prompt(s) over max_prompt_len=%d tokens, kept %d", path,
                    ps.skipped_too_long, max_prompt_len, len(ps))
    if not len(ps):
        raise JSEError(f"no usable prompts in '{path}' ({bad} malformed, {ps.skipped_too_long} too "
                       f"long for max_prompt_len={max_prompt_len})")
    return ps
