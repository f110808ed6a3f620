"""Tasks with checkable answers: the embedded arithmetic task and GSM8K.

    task = get_task("arithmetic", seed=0, n_train=20000)   # or get_task("gsm8k", raw_dir=..., data_dir=...)
    ex = task.examples("test")[0]; task.messages(ex); task.verify(ex, response_text)
"""

import inspect

from jaxselfeval.errors import JSEError, closest
from jaxselfeval.tasks.base import SPLITS, Example, Task, canonical_number, extract_answer

TASKS = ("arithmetic", "gsm8k")


def _task_cls(name: str) -> type[Task]:
    if name == "arithmetic":
        from jaxselfeval.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask
    if name == "gsm8k":
        from jaxselfeval.tasks.gsm8k import GSM8KTask

        return GSM8KTask
    raise JSEError(f"unknown task '{name}'{closest(name, TASKS)}: use one of {', '.join(TASKS)}")


def get_task(name: str, **kwargs) -> Task:
    """The task called `name` ("arithmetic" or "gsm8k") built with `kwargs`."""
    cls = _task_cls(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for k in kwargs:
        if k not in valid:
            raise JSEError(f"task '{name}' has no option '{k}'{closest(k, valid)}: its options are "
                           f"{', '.join(valid)}")
    return cls(**kwargs)


__all__ = ["Example", "Task", "SPLITS", "TASKS", "canonical_number", "extract_answer", "get_task"]
