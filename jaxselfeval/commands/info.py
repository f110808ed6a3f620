"""`jaxselfeval info` and `jaxselfeval convert` (an HF directory or a GGUF file)."""

from __future__ import annotations

import json


def add_info_arguments(p):
    p.add_argument("--model", required=True, help="HF model directory (config.json + safetensors)")
    p.add_argument("--load", action="store_true", help="also load every tensor (checks shapes)")


def run_info(args) -> int:
    import jaxselfeval as jse
    from jaxselfeval.model.config import read_hf_config

    cfg = read_hf_config(args.model)
    n = jse.count_params(jse.abstract_model(cfg))
    if args.load:
        jse.load_pretrained(args.model)
    print(json.dumps({"params": n, **cfg.to_hf_dict()}, indent=2))
    return 0


def add_convert_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF model directory to read")
    src.add_argument("--gguf", help="llama.cpp GGUF file to read (dequantized; tokenizer and chat "
                                    "template from its metadata)")
    p.add_argument("--out", required=True, help="HF directory to write")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written tensors (default: as loaded)")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="safetensors shard size")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even when it holds something other than an HF model "
                        "export (an export there is replaced without it)")


def run_convert(args) -> int:
    import jaxselfeval as jse

    if args.gguf:
        from jaxselfeval.gguf_io import convert_gguf

        print(f"wrote {convert_gguf(args.gguf, args.out, dtype=args.dtype or 'float32')}")
        return 0
    model = jse.load_pretrained(args.model, dtype=args.dtype or "float32")
    out = jse.save_pretrained(model, args.out, dtype=args.dtype,
                              max_shard_bytes=int(args.max_shard_gb * 1024**3),
                              overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
