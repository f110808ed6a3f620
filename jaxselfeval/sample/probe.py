"""The self-evaluation probe turn, derived once from the tokenizer's chat template.

Single source of truth for the sampler's probe and the training examples: for any template the
probed text is exactly what the template renders for [..., assistant: response, user: probe
question] + the assistant generation prompt. With the Llama 3 template a response closes with
<|eot_id|>; with ChatML (SmolLM2, Qwen) with <|im_end|> and then "\\n", which belongs to the
suffix, so a finished response (ending with <|im_end|>) is followed by "\\n" + the probe turn and
a truncated one by <|im_end|> "\\n" + the probe turn.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxselfeval.errors import JSEError
from jaxselfeval.tokenizer import PROBE_QUESTION, assistant_turn_close, encode_chat, probe_token_ids


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """eot: the first token that closes an assistant turn (generation stops there); suffix: the
    tokens after it: the rest of the turn's closing tokens, the user probe turn and the assistant
    header; yes/no: the answer token ids read at the last suffix position."""

    eot: int
    suffix: tuple[int, ...]
    yes: int
    no: int

    def after(self, response_ids) -> list[int]:
        """Tokens that follow `response_ids` to ask the probe (eot added if the response lacks it)."""
        r = list(response_ids)
        return ([] if r and r[-1] == self.eot else [self.eot]) + list(self.suffix)


def probe_spec(tokenizer) -> ProbeSpec:
    """Render a turn with and without the probe question and take the difference; the turn's
    closing tokens come from the template (`assistant_turn_close`)."""
    q = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "R"}]
    a = encode_chat(tokenizer, q, add_generation_prompt=False)
    b = encode_chat(tokenizer, q + [{"role": "user", "content": PROBE_QUESTION}],
                    add_generation_prompt=True)
    if b[:len(a)] != a:
        raise JSEError("the chat template renders earlier turns differently when a turn is added: "
                       "cannot derive the probe suffix")
    close = assistant_turn_close(tokenizer, "R")
    yes, no = probe_token_ids(tokenizer)
    return ProbeSpec(eot=close[0], suffix=tuple(close[1:]) + tuple(b[len(a):]), yes=yes, no=no)


def no_share(model, hidden, yes_no):
    """The self-evaluation score P(No) / (P(Yes) + P(No)) from the final-normed hidden state at
    the last probe position, f32 [B, D] -> [B]: the softmax's normaliser cancels, so it is
    sigmoid(logit(No) - logit(Yes)) and needs only those two columns of the LM head (no
    [B, V] logits; no underflow when both probabilities are tiny)."""
    lg = model.token_logits(hidden, yes_no)  # [B, 2]
    return jax.nn.sigmoid(lg[:, 1] - lg[:, 0])
