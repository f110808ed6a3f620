"""The task interface: examples with step-by-step solutions and a verifier."""

from __future__ import annotations

import abc
import dataclasses
import re

from jaxselfeval.errors import JSEError

SPLITS = ("train", "validation", "test")
SYSTEM = "Solve the problem step by step. End with a line '#### <answer>'."
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    solution: str  # step-by-step, last line "#### <number>"
    answer: str  # canonical final number
    difficulty: int = 0


def canonical_number(s: str) -> str | None:
    """'1,000' -> '1000', '$5.00' -> '5', '-3.' -> '-3'; None if no number."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    m = _NUM.search(s)
    if not m:
        return None
    v = m.group(0)
    if "." in v:
        v = v.rstrip("0").rstrip(".")
    if v in ("-0", ""):
        v = "0"
    return v


def extract_answer(text: str) -> str | None:
    """The GSM8K convention: the number after the last '####'; None when there is no '####'."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().splitlines()
    return canonical_number(tail[0]) if tail else None


class Task(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def examples(self, split: str) -> list[Example]:
        """All examples of `split` (train, validation or test)."""

    def extract_answer(self, text: str) -> str | None:
        return extract_answer(text)

    def verify(self, example: Example, response: str) -> float:
        """1.0 if the response's final answer equals the example's, else 0.0."""
        return 1.0 if self.extract_answer(response) == example.answer else 0.0

    def messages(self, example: Example) -> list[dict]:
        """Chat turns of the prompt."""
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example.question}]

    @staticmethod
    def check_split(split: str) -> str:
        if split not in SPLITS:
            raise JSEError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        return split
