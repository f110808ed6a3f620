"""The task interface: examples with step-by-step solutions and a verifier."""

from __future__ import annotations

import abc
import dataclasses
import decimal
import re

from jaxselfeval.errors import JSEError

SPLITS = ("train", "validation", "test")
SYSTEM = "Solve the problem step by step. End with a line '#### <answer>'."
_NUM = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
# lm-eval's GSM8K "flexible-extract": the last match of this pattern anywhere in the response
_FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_CTX = decimal.Context(prec=200)  # exact for any plausible answer (the default 28 digits rounds)


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem: `solution` is the reference response, `answer` its canonical final number."""

    id: str
    question: str
    solution: str  # step-by-step, last line "#### <number>"
    answer: str  # canonical final number
    difficulty: int = 0


def canonical_number(s: str) -> str | None:
    """The first number in `s`, canonical: '1,000' -> '1000', '$5.00' -> '5', '-3.' -> '-3',
    '.5' -> '0.5', '007' -> '7'; None if there is no number."""
    m = _NUM.search(s.replace(",", "").replace("$", ""))
    if not m:
        return None
    v = format(decimal.Decimal(m.group(0)).normalize(_CTX), "f")
    return "0" if v == "-0" else v


def extract_answer(text: str) -> str | None:
    """The GSM8K convention: the first number on the line after the last '####', canonical.

    None when the text has no '####' (no fallback to "the last number in the text": a response
    that never states its answer counts as wrong)."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().splitlines()
    return canonical_number(tail[0]) if tail else None


def extract_last_number(text: str) -> str | None:
    """lm-eval's GSM8K "flexible-extract": the last number-like run in the text, canonical
    ("The answer is $1,200." -> '1200'); None when the text has no digit."""
    for m in reversed(_FLEX.findall(text)):
        v = canonical_number(m[0] or m[1])
        if v is not None:
            return v
    return None


EXTRACTORS = {"strict": extract_answer, "flexible": extract_last_number}


class Task(abc.ABC):
    """A problem set with a verifier: `examples(split)`, `messages(example)` (the prompt's chat
    turns) and `verify(example, response)` (1.0 / 0.0 on the extracted final answer)."""

    name: str = ""
    # how `verify` reads a response's final answer: "strict" (after the last '####') or
    # "flexible" (the last number, lm-eval's GSM8K flexible-extract)
    extract: str = "strict"
    # the ways a response can go (e.g. arithmetic: worked / direct), for reports that split the
    # token's AUROC by kind of mistake; () when the task tells none apart
    kinds: tuple[str, ...] = ()

    @abc.abstractmethod
    def examples(self, split: str) -> list[Example]:
        """All examples of `split` (train, validation or test)."""

    def extract_answer(self, text: str) -> str | None:
        """The canonical final answer of a response, read by `self.extract`, or None."""
        return EXTRACTORS[self.extract](text)

    def verify_strict(self, example: Example, response: str) -> float:
        """1.0 if the number after the response's last '####' equals the answer (the strict
        figure, reported beside a flexible `verify`)."""
        return 1.0 if extract_answer(response) == example.answer else 0.0

    def verify(self, example: Example, response: str) -> float:
        """1.0 if the response's (assistant text's) final answer equals the example's, else 0.0."""
        return 1.0 if self.extract_answer(response) == example.answer else 0.0

    def response_kind(self, response: str) -> int:
        """Index into `kinds` of the way this response went, or -1 (no kinds)."""
        return -1

    def messages(self, example: Example) -> list[dict]:
        """Chat turns of the prompt."""
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example.question}]

    @staticmethod
    def check_extract(extract: str) -> str:
        if extract not in EXTRACTORS:
            raise JSEError(f"unknown extract '{extract}': use one of {', '.join(EXTRACTORS)} "
                           "(strict: the number after '####'; flexible: the last number)")
        return extract

    @staticmethod
    def check_split(split: str) -> str:
        if split not in SPLITS:
            raise JSEError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        return split
