"""Embedded GSM-style arithmetic word problems, generated from a seed.

Difficulty d (1..4) is the number of operations; the starting number grows with d. Solutions show one
operation per line and end with '#### <answer>'. Splits are disjoint by question text.
"""

from __future__ import annotations

import random

from jaxselfeval.tasks.base import Example, Task

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

    def __init__(self, seed: int = 0, n_train: int = 20000, n_validation: int = 500,
                 n_test: int = 500, max_steps: int = 4):
        self.seed, self.max_steps = seed, max_steps
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
        return out

    def messages(self, example: Example) -> list[dict]:
        """Just the question as the user turn (short prompts keep the tiny model fast)."""
        return [{"role": "user", "content": example.question}]

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if self._cache is None:
            self._cache = self._build()
        return self._cache[split]
