#!/usr/bin/env python3
"""PyTorch side of the CPU benchmarks, run next to visword's in the same session.

  python3 tools/bench_torch.py gemm                 # f32 matmul on the benchmark shapes
  python3 tools/bench_torch.py llm DIR [--dtype f32|bf16] [--prompt-len 128] [--new 64]

Threads are pinned to 2 (torch.set_num_threads) to match the visword runs. Prints one JSON
object per line.
"""
import argparse
import json
import statistics
import time

import torch


def timeit(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), max(ts)


def gemm(args):
    for m, k, n in [(128, 576, 1536), (577, 1024, 4096), (128, 576, 576)]:
        x = torch.randn(m, k)
        w = torch.randn(n, k)
        med, lo, hi = timeit(lambda: torch.nn.functional.linear(x, w), reps=20)
        print(json.dumps({"engine": "torch", "op": f"gemm_f32/{m}x{k}x{n}", "median_ms": med * 1e3,
                          "min_ms": lo * 1e3, "max_ms": hi * 1e3, "gflops": 2 * m * n * k / med / 1e9}))


def llm(args):
    from transformers import AutoModelForCausalLM
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=dtype)
    model.eval()
    load_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size - 100, (1, args.prompt_len), generator=g)
    with torch.inference_mode():
        def prefill():
            model(ids, use_cache=True, logits_to_keep=1)
        med, lo, hi = timeit(prefill, reps=5, warmup=1)
        # Greedy decode of `new` tokens after the prompt (min_new_tokens forces the full count).
        def gen():
            model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        gen()
        t = time.perf_counter()
        gen()
        total = time.perf_counter() - t
    decode_s = max(total - med, 1e-9)
    print(json.dumps({"engine": f"transformers {__import__('transformers').__version__} eager {args.dtype}",
                      "load_s": load_s, "prefill_tok_s": args.prompt_len / med, "prefill_ms": med * 1e3,
                      "decode_tok_s": (args.new - 1) / decode_s, "prompt_len": args.prompt_len, "new_tokens": args.new}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("gemm")
    p = sub.add_parser("llm")
    p.add_argument("dir")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"gemm": gemm, "llm": llm}[args.cmd](args)


if __name__ == "__main__":
    main()
