"""Tasks with checkable answers: the embedded arithmetic task and GSM8K."""

from jaxselfeval.errors import JSEError, closest
from jaxselfeval.tasks.base import Example, Task, extract_answer

TASKS = ("arithmetic", "gsm8k")


def get_task(name: str, **kwargs) -> Task:
    if name == "arithmetic":
        from jaxselfeval.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(**kwargs)
    if name == "gsm8k":
        from jaxselfeval.tasks.gsm8k import GSM8KTask

        return GSM8KTask(**kwargs)
    raise JSEError(f"unknown task '{name}'{closest(name, TASKS)}: use one of {', '.join(TASKS)}")


__all__ = ["Example", "Task", "extract_answer", "get_task", "TASKS"]
