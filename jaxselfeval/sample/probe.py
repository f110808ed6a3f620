"""The self-evaluation probe turn, derived once from the tokenizer's chat template.

Single source of truth for the sampler's probe and the training examples.
"""

from __future__ import annotations

import dataclasses

from jaxselfeval.errors import JSEError
from jaxselfeval.tokenizer import PROBE_QUESTION, encode_chat, probe_token_ids


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """eot: the end-of-turn id closing a response; suffix: the tokens after it (user probe turn +
    assistant header); yes/no: the answer token ids read at the last suffix position."""

    eot: int
    suffix: tuple[int, ...]
    yes: int
    no: int

    def after(self, response_ids) -> list[int]:
        """Tokens that follow `response_ids` to ask the probe (eot added if the response lacks it)."""
        r = list(response_ids)
        return ([] if r and r[-1] == self.eot else [self.eot]) + list(self.suffix)


def probe_spec(tokenizer) -> ProbeSpec:
    """Render a turn with and without the probe question and take the difference."""
    q = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "R"}]
    a = encode_chat(tokenizer, q, add_generation_prompt=False)
    b = encode_chat(tokenizer, q + [{"role": "user", "content": PROBE_QUESTION}],
                    add_generation_prompt=True)
    if b[:len(a)] != a:
        raise JSEError("the chat template renders earlier turns differently when a turn is added: "
                       "cannot derive the probe suffix")
    yes, no = probe_token_ids(tokenizer)
    return ProbeSpec(eot=a[-1], suffix=tuple(b[len(a):]), yes=yes, no=no)
