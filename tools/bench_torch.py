#!/usr/bin/env python3
"""PyTorch + transformers side of visword's benchmarks, run on the same machine in the same session.

The stage table (the default command): issue 4's stages in PyTorch, bf16, batch 1, random weights
built from configs (nothing is downloaded), eager and torch.compile:

  python3 tools/bench_torch.py [--json OUT] [--modes eager,compile] [--stages decode,sam,...]
  python3 tools/bench_torch.py --tiny            # tiny widths, real geometry: < 1 min on a CPU
                                                 # (eager only; add --modes eager,compile: ~2 min)

  stage         what runs                                                   visword's row
  decode        LlamaForCausalLM 7B, ms per greedy token after a 576 + 40    decode
                token prefill (KV cache; one host read of the token per step)
  prefill_616   the 7B from inputs_embeds, 576 + 40 tokens, last logits      prefill_616
  prefill_80    the same, 40 + 40 tokens                                      prefill_80
  vision        CLIPVisionModel ViT-L/14-336 up to LLaVA's feature layer     vision
                (23 of 24 layers: the work visword does)
  sam           SamModel ViT-H image encoder (get_image_embeddings), 1024²    sam
  superpixels   SAM's prompt encoder + mask decoder over a 32×32 point grid   superpixels (visword's
                given the image embeddings (one batch, 3 masks per point)     row adds the postprocessing)
  scatter_pool  scatter-mean pooling 576×1024 → 40 with the SSPE inputs:      scatter_pool
                W[40, 576] @ (feats + pos), f32 (visword pools in f32)

Timing: CUDA events around each call (a batch of calls for ops of a few µs), after warm-ups; the
median of the timed calls. The card's limits are measured in the same run: a 1 GiB
device-to-device copy (bytes read + written per second) and an 8192³ bf16 matmul. Attention is
transformers' default implementation (recorded in the JSON). torch.compile runs in default mode,
decode with a static cache in "reduce-overhead" mode (CUDA graphs); a stage whose compile fails
is reported with the error, and the rest go on.

The CPU subcommands used by tools/bench_cpu.sh are kept:

  python3 tools/bench_torch.py gemm                 # f32 matmul on the benchmark shapes
  python3 tools/bench_torch.py llm DIR [--dtype f32|bf16] [--prompt-len 128] [--new 64]

Those pin threads to --threads (2 by default, matching the visword CPU runs) and print one JSON
object per line.
"""
import argparse
import contextlib
import inspect
import json
import math
import statistics
import sys
import time
import traceback

import torch

STAGES = ["decode", "prefill_616", "prefill_80", "vision", "sam", "superpixels", "scatter_pool"]
LABELS = {
    "decode": "LLM decode after 576 + 40 tokens, per token",
    "prefill_616": "LLM prefill 576 + 40 tokens",
    "prefill_80": "LLM prefill 40 + 40 tokens",
    "vision": "CLIP encoder 336²",
    "sam": "SAM image encoder 1024²",
    "superpixels": "SAM mask decoder, point grid",
    "scatter_pool": "scatter-mean pool + SSPE 576×C → 40",
}


# ---------------------------------------------------------------------------------------------
# Timing


class Clock:
    """Median milliseconds per call, timed with CUDA events on a GPU and the host clock on a CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def median_ms(self, fn, reps, warmup, inner=1):
        for _ in range(warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / inner)
            else:
                t = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples.append((time.perf_counter() - t) * 1e3 / inner)
        return statistics.median(samples)


@contextlib.contextmanager
def default_dtype(dtype):
    """Parameters are created in `dtype` directly: a 7B model never exists in f32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(cls, config, device, dtype, seed):
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype), torch.no_grad():
        model = cls(config)
    return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------
# Shapes: the real ones (LISA-7B: Llama-2-7B, CLIP ViT-L/14-336, SAM ViT-H), or tiny widths with
# the same token geometry for a CPU smoke run.


def shapes(tiny):
    if tiny:
        return dict(
            llama=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048),
            clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            sam_vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                            output_channels=32, num_pos_feats=16),
            sam_neck=32, sam_decoder=dict(mlp_dim=64, num_attention_heads=2),
            points_per_side=4, pool_width=32, decode_tokens=4, reps=3,
        )
    return dict(
        llama=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
        # LLaVA/LISA take hidden state -2: the last of the 24 layers never runs.
        clip=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16),
        sam_vision=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31],
                        output_channels=256, num_pos_feats=128),
        sam_neck=256, sam_decoder=dict(mlp_dim=2048, num_attention_heads=8),
        points_per_side=32, pool_width=1024, decode_tokens=16, reps=10,
    )


# ---------------------------------------------------------------------------------------------
# The Llama stages


def cache_kwarg(model):
    """transformers renamed `past_key_values` to `cache` (5.2x); pass whichever forward takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


class LlamaStages:
    def __init__(self, sh, device, dtype, clock):
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**sh["llama"], hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
        self.cfg, self.device, self.dtype, self.clock = cfg, device, dtype, clock
        self.model = build(LlamaForCausalLM, cfg, device, dtype, seed=1)
        self.kw = cache_kwarg(self.model)
        self.decode_tokens = sh["decode_tokens"]
        self.reps = sh["reps"]
        g = torch.Generator(device="cpu").manual_seed(2)
        scale = 1.0 / math.sqrt(cfg.hidden_size)
        self.embeds = (torch.randn(1, 616, cfg.hidden_size, generator=g) * scale).to(device=device, dtype=dtype)
        self.attn = getattr(cfg, "_attn_implementation", None)

    def prefill(self, fn, n):
        emb = self.embeds[:, :n].contiguous()

        def run():
            return fn(inputs_embeds=emb, use_cache=True, logits_to_keep=1)

        return self.clock.median_ms(run, reps=self.reps, warmup=3)

    def decode_eager(self):
        m, n = self.model, self.decode_tokens

        def run():
            out = m(inputs_embeds=self.embeds, use_cache=True, logits_to_keep=1)
            cache, tok = returned_cache(out), out.logits[:, -1:].argmax(-1)
            self.clock.sync()
            t = self._start()
            for _ in range(n):
                out = m(input_ids=tok, use_cache=True, **{self.kw: cache})
                cache, tok = returned_cache(out), out.logits[:, -1:].argmax(-1)
                int(tok)  # the host reads each token, as a generator does
            return self._stop(t) / n

        return self._median_of(run)

    def decode_compiled(self):
        """gpt-fast style: a static cache filled by an eager prefill, then the one-token step
        compiled with CUDA graphs, positions given explicitly."""
        from transformers import StaticCache

        m, n = self.model, self.decode_tokens
        step = torch.compile(m.forward, mode="reduce-overhead" if self.clock.cuda else "default", fullgraph=False)
        params = inspect.signature(m.forward).parameters
        total = 616 + n + 1

        def run():
            cache = StaticCache(config=self.cfg, max_cache_len=total)
            extra = {"cache_position": torch.arange(616, device=self.device)} if "cache_position" in params else {}
            pos = torch.arange(616, device=self.device)[None]
            out = m(inputs_embeds=self.embeds, position_ids=pos, use_cache=True, logits_to_keep=1, **{self.kw: cache}, **extra)
            tok = out.logits[:, -1:].argmax(-1)
            self.clock.sync()
            t = self._start()
            for i in range(n):
                p = torch.tensor([[616 + i]], device=self.device)
                extra = {"cache_position": p[0]} if "cache_position" in params else {}
                out = step(input_ids=tok, position_ids=p, use_cache=True, **{self.kw: cache}, **extra)
                tok = out.logits[:, -1:].argmax(-1)
                int(tok)
            return self._stop(t) / n

        return self._median_of(run)

    def _start(self):
        if self.clock.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _stop(self, start):
        if self.clock.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            e.synchronize()
            return start.elapsed_time(e)
        return (time.perf_counter() - start) * 1e3

    def _median_of(self, run):
        with torch.inference_mode():
            for _ in range(2):
                run()
            return statistics.median(run() for _ in range(max(3, self.reps // 3)))


# ---------------------------------------------------------------------------------------------
# The vision stages


def clip_model(sh, device, dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(**sh["clip"], image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return build(CLIPVisionModel, cfg, device, dtype, seed=3)


def sam_model(sh, device, dtype):
    from transformers import SamConfig, SamModel

    neck = sh["sam_neck"]
    cfg = SamConfig(
        vision_config=dict(**sh["sam_vision"], image_size=1024, patch_size=16, window_size=14, mlp_ratio=4.0),
        prompt_encoder_config=dict(hidden_size=neck, image_size=1024, patch_size=16),
        mask_decoder_config=dict(hidden_size=neck, iou_head_hidden_dim=neck, **sh["sam_decoder"]),
    )
    return build(SamModel, cfg, device, dtype, seed=4)


def point_grid(n, device, dtype):
    """An n×n grid of foreground points at cell centres in the 1024² input frame, one per prompt."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * (1024.0 / n)
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)[None, :, None, :]
    labels = torch.ones(1, n * n, 1, dtype=torch.long)
    return pts.to(device=device, dtype=dtype), labels.to(device)


# ---------------------------------------------------------------------------------------------
# The card's limits


def peaks(device, clock, tiny):
    out = {}
    nbytes = (1 << 30) if device.type == "cuda" and not tiny else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = clock.median_ms(lambda: dst.copy_(src), reps=10, warmup=3)
    out["copy_gb_per_s"] = 2 * nbytes / (ms * 1e-3) / 1e9
    n = 8192 if device.type == "cuda" and not tiny else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = clock.median_ms(lambda: a @ b, reps=10, warmup=3)
    out["bf16_matmul_tflops"] = 2 * n**3 / (ms * 1e-3) / 1e12
    out["matmul_n"] = n
    return out


# ---------------------------------------------------------------------------------------------
# The stage table


def first_line(e):
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def run_stages(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16
    sh = shapes(args.tiny)
    clock = Clock(device)
    wanted = [s for s in (args.stages.split(",") if args.stages else STAGES)]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        sys.exit(f"error: --stages: unknown {unknown}; known: {','.join(STAGES)}")
    modes = (args.modes or ("eager" if args.tiny else "eager,compile")).split(",")
    if any(m not in ("eager", "compile") for m in modes):
        sys.exit("error: --modes takes eager and/or compile")
    import transformers

    report = {
        "tool": "bench_torch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "bf16",
        "tiny": args.tiny,
        "points_per_side": sh["points_per_side"],
        "pool_width": sh["pool_width"],
        "decode_tokens": sh["decode_tokens"],
        "peaks": None,
        "stages": [],
    }
    rows = {s: {"stage": s, "label": LABELS[s], "eager_ms": None, "compile_ms": None, "eager_error": None, "compile_error": None} for s in wanted}
    rows.get("superpixels", {})["label"] = f"SAM mask decoder, {sh['points_per_side']}² point grid"
    rows.get("scatter_pool", {})["label"] = f"scatter-mean pool + SSPE 576×{sh['pool_width']} → 40"

    def measure(stage, mode, fn):
        if stage not in rows or mode not in modes:
            return
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                rows[stage][f"{mode}_ms"] = fn()
        except Exception as e:  # a failed stage is reported, the others go on
            rows[stage][f"{mode}_error"] = first_line(e)
            if args.verbose:
                traceback.print_exc()
        if args.verbose:
            print(f"{stage} {mode}: {rows[stage][f'{mode}_ms']} ms ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    try:
        report["peaks"] = peaks(device, clock, args.tiny)
    except Exception as e:
        report["peaks_error"] = first_line(e)

    if {"decode", "prefill_616", "prefill_80"} & set(wanted):
        try:
            llm = LlamaStages(sh, device, dtype, clock)
        except Exception as e:
            llm = None
            for s in ("decode", "prefill_616", "prefill_80"):
                if s in rows:
                    rows[s]["eager_error"] = rows[s]["compile_error"] = "building the model: " + first_line(e)
        if llm is not None:
            report["attn_implementation"] = llm.attn
            measure("prefill_616", "eager", lambda: llm.prefill(llm.model, 616))
            measure("prefill_80", "eager", lambda: llm.prefill(llm.model, 80))
            measure("decode", "eager", llm.decode_eager)
            if "compile" in modes:
                compiled = torch.compile(llm.model)
                measure("prefill_616", "compile", lambda: llm.prefill(compiled, 616))
                measure("prefill_80", "compile", lambda: llm.prefill(compiled, 80))
                measure("decode", "compile", llm.decode_compiled)
            del llm
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if "vision" in rows:
        try:
            clip = clip_model(sh, device, dtype)
            px = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(5)).to(device=device, dtype=dtype)
            measure("vision", "eager", lambda: clock.median_ms(lambda: clip(pixel_values=px), reps=sh["reps"] * 2, warmup=3))
            cclip = torch.compile(clip) if "compile" in modes else None
            measure("vision", "compile", lambda: clock.median_ms(lambda: cclip(pixel_values=px), reps=sh["reps"] * 2, warmup=3))
            del clip, cclip
        except Exception as e:
            rows["vision"]["eager_error"] = "building the model: " + first_line(e)

    if {"sam", "superpixels"} & set(wanted):
        try:
            sam = sam_model(sh, device, dtype)
            px = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(6)).to(device=device, dtype=dtype)
            with torch.inference_mode():
                emb = sam.get_image_embeddings(px)
            pts, labels = point_grid(sh["points_per_side"], device, dtype)

            def decoder(model):
                return lambda: model(image_embeddings=emb, input_points=pts, input_labels=labels, multimask_output=True)

            reps = max(3, sh["reps"] // 2)
            measure("sam", "eager", lambda: clock.median_ms(lambda: sam.get_image_embeddings(px), reps=reps, warmup=2))
            measure("superpixels", "eager", lambda: clock.median_ms(decoder(sam), reps=reps, warmup=2))
            if "compile" in modes:
                enc = torch.compile(sam.get_image_embeddings)
                measure("sam", "compile", lambda: clock.median_ms(lambda: enc(px), reps=reps, warmup=3))
                csam = torch.compile(sam)
                measure("superpixels", "compile", lambda: clock.median_ms(decoder(csam), reps=reps, warmup=3))
            del sam
        except Exception as e:
            for s in ("sam", "superpixels"):
                if s in rows:
                    rows[s]["eager_error"] = "building the model: " + first_line(e)

    if "scatter_pool" in rows:
        g = torch.Generator().manual_seed(7)
        s, p, c = 40, 576, sh["pool_width"]
        w = torch.rand(s, p, generator=g)
        w = (w / w.sum(1, keepdim=True)).to(device)
        feats = torch.randn(p, c, generator=g).to(device)
        pos = torch.randn(p, c, generator=g).to(device)

        def pool(a, f, q):
            return a @ (f + q)

        # A few µs per call: timed in batches of 100 so the events' resolution does not matter.
        measure("scatter_pool", "eager", lambda: clock.median_ms(lambda: pool(w, feats, pos), reps=20, warmup=10, inner=100))
        cpool = torch.compile(pool) if "compile" in modes else None
        measure("scatter_pool", "compile", lambda: clock.median_ms(lambda: cpool(w, feats, pos), reps=20, warmup=10, inner=100))

    report["stages"] = [rows[s] for s in STAGES if s in rows]
    return report


def ms_text(ms):
    if ms is None:
        return "—"
    if ms < 0.1:
        return f"{ms * 1e3:.2f} µs"
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def render(report):
    lines = [
        f"torch:    {report['torch']}, transformers {report['transformers']}, attention {report.get('attn_implementation', '?')}",
        f"device:   {report['device']}",
        f"weights:  bf16, random (configs{' tiny' if report['tiny'] else ''}); batch 1",
    ]
    p = report.get("peaks")
    if p:
        lines.append(f"peaks:    copy {p['copy_gb_per_s']:.0f} GB/s (read + write); bf16 matmul {p['matmul_n']}³ {p['bf16_matmul_tflops']:.1f} TFLOP/s")
    lines.append("")
    header = ["stage", "eager", "compile", "note"]
    rows = []
    for r in report["stages"]:
        note = "; ".join(f"{m}: {r[f'{m}_error']}" for m in ("eager", "compile") if r[f"{m}_error"])
        eager = ms_text(r["eager_ms"])
        if r["stage"] == "decode" and r["eager_ms"]:
            eager += f" ({1e3 / r['eager_ms']:.1f} tok/s)"
        comp = ms_text(r["compile_ms"])
        if r["stage"] == "decode" and r["compile_ms"]:
            comp += f" ({1e3 / r['compile_ms']:.1f} tok/s)"
        rows.append([r["label"], eager, comp, note[:120]])
    widths = [max(len(x[i]) for x in rows + [header]) for i in range(len(header))]
    for cells in [header] + rows:
        lines.append("  ".join(c.ljust(widths[i]) if i in (0, 3) else c.rjust(widths[i]) for i, c in enumerate(cells)).rstrip())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The CPU subcommands (tools/bench_cpu.sh)


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 2 for gemm/llm, all for the stage table)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths, real geometry (a CPU smoke run)")
    ap.add_argument("--json", metavar="OUT", help="write the stage table as one JSON object")
    ap.add_argument("--modes", help="eager, compile or both (default: both; eager alone with --tiny, whose "
                    "compiles take minutes on a small CPU)")
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-stage progress and tracebacks on stderr")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("gemm")
    p = sub.add_parser("llm")
    p.add_argument("dir")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    if args.cmd in ("gemm", "llm"):
        torch.set_num_threads(args.threads or 2)
        {"gemm": gemm, "llm": llm}[args.cmd](args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_stages(args)
    sys.stdout.write(render(report))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        import os
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
