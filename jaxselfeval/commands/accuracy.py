"""`jaxselfeval accuracy`: sample@1 and pass@N of a model on a task split."""

from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("--model", default=None, help="HF model directory (default: the shipped tiny base)")
    p.add_argument("--task", default="arithmetic", help="arithmetic | gsm8k")
    p.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE",
                   help="the task's options as YAML values, e.g. max_steps=1 'shots=[2,2,1]' "
                        "extract=flexible")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=300, help="number of problems")
    p.add_argument("--n", type=int, default=16, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = none)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", default=None, help="write the JSON result here")
    from jaxselfeval.commands.placement import add_placement_arguments

    add_placement_arguments(p)


def run(args) -> int:
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.commands.placement import load_model
    from jaxselfeval.evaluate.accuracy import format_accuracy, sample_accuracy
    from jaxselfeval.configs import parse_task_args
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    task = get_task(args.task, **parse_task_args(args.task_args))
    path = args.model or default_model_dir()
    model = load_model(path, args)
    tok = load_tokenizer(path)
    res = sample_accuracy(model, tok, task, split=args.split, limit=args.limit,
                          n=args.n, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens)
    print(format_accuracy(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0
