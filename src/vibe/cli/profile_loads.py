"""`vibe profile loads`: run a Hugging Face MoE model over a text file, record its routing."""

from __future__ import annotations

import argparse

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vibe.cli._common import check_outputs, console, err_console, positive_int
from vibe.errors import VibeError


def register(cli) -> None:
    p = cli.command("loads", "run an HF transformers MoE model over a dataset and record which experts each "
                             "token picks (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3)", cmd_profile_loads,
                    group="profile")
    p.add_argument("--model", required=True, metavar="HF_ID_OR_PATH", help="Hub id or local folder (safetensors)")
    p.add_argument("--dataset", required=True, metavar="FILE",
                   help="text file (one sequence per non-empty line) or .jsonl with a 'text' field")
    p.add_argument("--out", required=True, help="loads file to write (vibe.loads/v1)")
    p.add_argument("--trace", default=None, metavar="NPZ", help="also write the token-level trace (.npz)")
    p.add_argument("--max-sequences", type=positive_int, default=None, metavar="N", help="first N sequences only")
    p.add_argument("--max-tokens", type=positive_int, default=512, metavar="T", help="cut each sequence to T tokens")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")


def cmd_profile_loads(args: argparse.Namespace) -> int:
    from vibe.profile.routing import load_model, read_dataset, record_routing, tokenize
    from vibe.loadstats import max_over_mean

    check_outputs([args.out, args.trace], [args.dataset, args.model])
    for name in ("max_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise VibeError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_sequences is not None and args.max_sequences < 1:
        raise VibeError("--max-sequences must be >= 1")
    texts = read_dataset(args.dataset, args.max_sequences)
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    sequences = tokenize(tokenizer, texts, args.max_tokens)
    with Progress(TextColumn("routing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("routing", total=len(sequences))
        trace = record_routing(model, sequences, args.batch_size, lambda n: bar.advance(task, n), args.model)
    loads = trace.to_loads(f"hf:{args.model}")
    if args.trace:
        trace.save(args.trace)
    loads.save(args.out)
    console.print(f"wrote {args.out}: {loads.num_layers} MoE layers ({loads.layer_ids[0]}..{loads.layer_ids[-1]}) x "
                  f"{loads.num_experts} experts, top-{loads.top_k}, {trace.num_tokens:,} tokens from "
                  f"{trace.num_sequences} sequences; busiest expert "
                  f"{np.median(max_over_mean(loads.counts)):.2f}x the mean (median layer)")
    if args.trace:
        console.print(f"wrote {args.trace}")
    return 0
