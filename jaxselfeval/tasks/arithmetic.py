"""Embedded GSM-style arithmetic word problems, generated from a seed.

Difficulty d (1..4) is the number of operations; the starting number grows with d. Solutions show one
operation per line and end with '#### <answer>'. Splits are disjoint by question text.

`direct_share` (one share per difficulty) answers that share of the *training* problems directly
(`#### <answer>`, no working; always correct), as people and LLMs skip the working on questions
that look easy: a model trained on it answers short problems directly more often, and its direct
answers to long ones are mostly wrong because it cannot compute them in one step. Those are
mistakes of capability, which the model's own hidden states can see (the way it answered and the
problem's length), unlike its sampled digit slips. Held-out splits keep worked solutions.

For a pretrained chat model as shipped (no fine-tuning on the task), `shots` shows worked
examples as earlier chat turns after a system turn that states the answer format (one per entry,
of that many operations; problems of their own, in no split), and `extract="flexible"` reads the
last number of a response as lm-eval's GSM8K flexible-extract does (`verify_strict` keeps the
'####' figure).
"""

from __future__ import annotations

import dataclasses
import random

from jaxselfeval.errors import JSEError
from jaxselfeval.tasks.base import SYSTEM, Example, Task

NAMES = ["Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Leo", "Zoe"]
ITEMS = ["apples", "coins", "books", "cards", "pens", "eggs", "shells", "stamps"]
GAIN = ["buys {n} more", "finds {n} more", "gets {n} more"]
LOSS = ["gives away {n}", "loses {n}", "sells {n}"]


def _problem(rng: random.Random, d: int):
    """d operations on small numbers (start <= 10 * (d + 1), operands 1..9, x2/x3 on small values):
    learnable by a few-million-parameter model, with errors compounding over steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pron = "He" if name in ("Tom", "Sam", "Ben", "Leo") else "She"
    x = rng.randint(2, 10 * (d + 1))
    parts = [f"{name} has {x} {item}."]
    lines = []
    for k in range(d):
        if d >= 3 and k == 0 and x <= 12 and rng.random() < 0.5:
            m = rng.randint(2, 3)
            parts.append(f"Then the {item} are multiplied by {m}.")
            lines.append(f"{x} * {m} = {x * m}")
            x *= m
        elif rng.random() < 0.5 or x < 3:
            n = rng.randint(1, 9)
            parts.append(f"{pron} " + rng.choice(GAIN).format(n=n) + ".")
            lines.append(f"{x} + {n} = {x + n}")
            x += n
        else:
            n = rng.randint(1, min(9, x - 1))
            parts.append(f"{pron} " + rng.choice(LOSS).format(n=n) + ".")
            lines.append(f"{x} - {n} = {x - n}")
            x -= n
    parts.append(f"How many {item} does {name} have now?")
    return " ".join(parts), "\n".join(lines + [f"#### {x}"]), str(x)


class ArithmeticTask(Task):
    """Seeded word problems; difficulty 1..max_steps spread evenly."""

    name = "arithmetic"
    kinds = ("worked", "direct")  # one operation per line / the answer straight away

    def __init__(self, seed: int = 0, n_train: int = 20000, n_validation: int = 500,
                 n_test: int = 500, max_steps: int = 4, direct_share=None, shots=(),
                 extract: str = "strict"):
        self.seed, self.max_steps = seed, max_steps
        self.shots = tuple(int(d) for d in shots)
        if any(d < 1 for d in self.shots):
            raise JSEError(f"shots are operation counts >= 1 (one worked example each), got "
                           f"{list(self.shots)}: e.g. shots=[2,2,1]")
        self.extract = self.check_extract(extract)
        self.direct_share = _check_shares(direct_share, max_steps)
        self.sizes = {"train": n_train, "validation": n_validation, "test": n_test}
        self._cache: dict[str, list[Example]] | None = None

    def _build(self) -> dict[str, list[Example]]:
        rng = random.Random(self.seed)
        seen: set[str] = set()
        out: dict[str, list[Example]] = {}
        # held-out splits first so they are the same whatever n_train is
        for split in ("test", "validation", "train"):
            exs = []
            while len(exs) < self.sizes[split]:
                d = 1 + len(exs) % self.max_steps
                q, sol, ans = _problem(rng, d)
                if q in seen:
                    continue
                seen.add(q)
                exs.append(Example(f"{split}-{len(exs)}", q, sol, ans, d))
            out[split] = exs
        srng = random.Random(f"shots-{self.seed}")  # its own stream: the splits do not move
        out["shots"] = []
        for d in self.shots:
            q, sol, ans = _problem(srng, d)
            while q in seen:
                q, sol, ans = _problem(srng, d)
            seen.add(q)
            out["shots"].append(Example(f"shot-{len(out['shots'])}", q, sol, ans, d))
        if self.direct_share:  # its own stream: the problems are the same with or without it
            drng = random.Random(f"direct-{self.seed}")
            out["train"] = [dataclasses.replace(e, solution=f"#### {e.answer}")
                            if drng.random() < self.direct_share[e.difficulty - 1] else e
                            for e in out["train"]]
        return out

    def response_kind(self, response: str) -> int:
        return int(is_direct(response))

    def messages(self, example: Example) -> list[dict]:
        """Just the question as the user turn (short prompts keep the tiny model fast); with
        `shots`, a system turn stating the answer format and the worked examples first."""
        if not self.shots:
            return [{"role": "user", "content": example.question}]
        if self._cache is None:
            self._cache = self._build()
        turns = [{"role": "system", "content": SYSTEM}]
        for e in self._cache["shots"]:
            turns += [{"role": "user", "content": e.question},
                      {"role": "assistant", "content": e.solution}]
        return turns + [{"role": "user", "content": example.question}]

    @staticmethod
    def checking_documents(examples, n: int, seed: int = 0):
        """n "check the working" documents (see `checking_document`)."""
        return checking_documents(examples, n, seed)

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if self._cache is None:
            self._cache = self._build()
        return self._cache[split]


def _check_shares(shares, max_steps: int) -> tuple | None:
    """direct_share: None, or one share in [0, 1] per difficulty 1..max_steps."""
    if shares is None:
        return None
    if isinstance(shares, (int, float)):
        shares = [shares] * max_steps
    shares = tuple(float(x) for x in shares)
    if len(shares) != max_steps or not all(0.0 <= x <= 1.0 for x in shares):
        raise JSEError(f"direct_share must be one share in [0, 1] per difficulty 1..{max_steps}, "
                       f"got {list(shares)}: e.g. direct_share=[0.7,0.4,0.35,0.3]")
    return shares


def is_direct(text: str) -> bool:
    """True when a response states its answer with no working (starts with '####')."""
    return text.lstrip().startswith("####")


MARK_OK, MARK_BAD = " ok", " bad"


def _slip(rng: random.Random, y: int) -> int:
    """A wrong result like a sampled one: one digit changed, or off by 1..3 (never negative)."""
    while True:
        if rng.random() < 0.5:
            s = list(str(y))
            i = rng.randrange(len(s))
            s[i] = rng.choice([c for c in "0123456789" if c != s[i] and (i or c != "0" or len(s) == 1)])
            w = int("".join(s))
        else:
            w = y + rng.choice([-3, -2, -1, 1, 2, 3])
        if w != y and w >= 0:
            return w


def checking_document(example: Example, rng: random.Random, p_slip: float = 0.5):
    """A "check the working" document: the example's solution, with probability p_slip one line's
    result replaced by a slip (later lines carry the wrong value on, correctly), every line
    followed by MARK_OK or MARK_BAD. Stands in for the critique text of an LLM's pretraining data.

    Returns (messages, segments): segments [(text, trained)] of the response, trained only on the
    marks."""
    lines = example.solution.split("\n")[:-1]
    bad = rng.randrange(len(lines)) if rng.random() < p_slip else -1
    while True:  # draw the slip again if carrying it on would make a later value negative
        segs, vals = [], []
        for k, line in enumerate(lines):
            x, op, n, _, _ = line.split(" ")
            x = vals[-1] if vals else int(x)
            val = x * int(n) if op == "*" else x + int(n) if op == "+" else x - int(n)
            if k == bad:
                val = _slip(rng, val)
            vals.append(val)
            segs += [(f"{x} {op} {n} = {val}", False),
                     (MARK_BAD if k == bad else MARK_OK, True), ("\n", False)]
        if min(vals) >= 0:
            break
    segs.append((f"#### {val}", False))
    return [{"role": "user", "content": "Check: " + example.question}], segs


def checking_documents(examples, n: int, seed: int = 0, p_slip: float = 0.5):
    """n checking documents from examples (drawn with replacement, seeded)."""
    rng = random.Random(seed)
    return [checking_document(rng.choice(examples), rng, p_slip) for _ in range(n)]
