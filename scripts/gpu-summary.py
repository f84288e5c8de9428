#!/usr/bin/env python3
"""The one summary table of scripts/gpu-check.sh: test counts per backend and every bench stage
side by side (visword cuda, visword wgpu, torch eager, torch compile, target), from the step
status file, the test logs and the JSON reports it left.

  python3 scripts/gpu-summary.py --logs LOG_DIR --out OUT_DIR
"""
import argparse
import json
import os
import re
import sys

STAGES = ["decode", "prefill_616", "prefill_80", "vision", "sam", "superpixels", "scatter_pool", "end_to_end"]
LABELS = {
    "decode": "LLM decode (tok/s)",
    "prefill_616": "prefill 576+40",
    "prefill_80": "prefill 40+40",
    "vision": "vision encoder 336²",
    "sam": "SAM encoder 1024²",
    "superpixels": "superpixels 32² / torch: mask dec.",
    "scatter_pool": "scatter pool + SSPE → 40",
    "end_to_end": "end to end (svp)",
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def tests_cell(logs, name, status):
    """'P ok / F fail' from libtest's result lines (several binaries' lines are summed)."""
    st = status.get(name)
    if st is None:
        return "—"
    if st[0] == "skipped":
        return "skipped"
    text = (read(os.path.join(logs, f"{name}.out")) or "") + (read(os.path.join(logs, f"{name}.log")) or "")
    passed = failed = 0
    found = False
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed", text):
        passed += int(m.group(1))
        failed += int(m.group(2))
        found = True
    if not found:
        return st[0]  # timeout / crash before the summary line
    cell = f"{passed} ok / {failed} fail"
    return cell if st[0] == "ok" or failed else f"{cell} ({st[0]})"


def ms_text(ms):
    if ms is None:
        return "—"
    if ms < 0.1:
        return f"{ms * 1e3:.1f} µs"
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def visword_cell(report, stage):
    if report is None:
        return "—"
    row = next((r for r in report.get("performance", []) if r["stage"] == stage), None)
    if row is None or row.get("ms") is None:
        return "—"
    text = f"{row['tokens_per_s']:.1f}" if stage == "decode" and row.get("tokens_per_s") else ms_text(row["ms"])
    if row.get("roofline_fraction") is not None:
        text += f" ({row['roofline_fraction'] * 100:.0f}%)"
    return text


def torch_cell(report, stage, mode):
    if report is None:
        return "—"
    row = next((r for r in report.get("stages", []) if r["stage"] == stage), None)
    if row is None:
        return "—"
    ms = row.get(f"{mode}_ms")
    if ms is None:
        return "failed" if row.get(f"{mode}_error") else "—"
    return f"{1e3 / ms:.1f}" if stage == "decode" else ms_text(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    status = {}
    for line in (read(os.path.join(a.logs, "status.tsv")) or "").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            status[parts[0]] = parts[1:]

    def first(*names):
        for n in names:
            r = load(os.path.join(a.out, n))
            if r is not None:
                return r, n
        return None, None

    cuda, _ = first("visword-cuda-lisa-7b.json")
    dinov2, _ = first("visword-cuda-dinov2-lisa-7b.json")
    wgpu, wgpu_name = first("visword-wgpu-lisa-7b.json", "visword-wgpu-tiny.json")
    coop, _ = first("visword-wgpu-coop-lisa-7b.json")
    tile64, _ = first("visword-wgpu-tile64-lisa-7b.json")
    checked, _ = first("visword-wgpu-checked-lisa-7b.json")
    gemv_batched, _ = first("visword-wgpu-gemv-batched-lisa-7b.json")
    simt_attn, _ = first("visword-cuda-simt-attn-lisa-7b.json")
    nofold, _ = first("visword-cuda-nofold-lisa-7b.json")
    fold_simt, _ = first("visword-cuda-fold-simt-lisa-7b.json")
    nofused, _ = first("visword-cuda-nofused-lisa-7b.json")
    nolt, _ = first("visword-cuda-nolt-lisa-7b.json")
    kvf32, _ = first("visword-cuda-kvf32-lisa-7b.json")
    eager, eager_name = first("torch-eager.json", "torch-eager-tiny-cpu.json")
    comp, _ = first("torch-compile.json")

    machine = read(os.path.join(a.logs, "machine.txt")) or ""
    gpu = re.search(r"^gpu: (.*)$", machine, re.M)
    date = re.search(r"^date: (.*)$", machine, re.M)
    commit = re.search(r"^gpu-bin commit: (.*)$", machine, re.M)
    vulkan = re.search(r"^vulkan: (\S+)", machine, re.M)
    print(f"gpu-check — {gpu.group(1) if gpu else 'no NVIDIA GPU'}; vulkan {vulkan.group(1) if vulkan else '?'}; "
          f"{date.group(1) if date else ''}; commit {commit.group(1) if commit else '?'}")
    notes = []
    if wgpu_name == "visword-wgpu-tiny.json":
        notes.append("visword wgpu ran the tiny preset (software Vulkan)")
    if eager_name == "torch-eager-tiny-cpu.json":
        notes.append("torch ran --tiny on the CPU (no GPU for PyTorch)")

    header = ["", "visword cuda", "visword wgpu", "torch eager", "torch compile", "target (H200)"]
    rows = [
        ["tests: gpu (ops, attention, models)", tests_cell(a.logs, "tests-cuda", status), tests_cell(a.logs, "tests-wgpu", status), "", "", "all pass"],
        ["tests: cuda_kernels", tests_cell(a.logs, "kernels", status), "", "", "", "all pass"],
        ["tests: wgpu GEMMs + models, coop GEMM on", "", tests_cell(a.logs, "tests-wgpu-coop", status), "", "", "all pass"],
    ]
    for stage in STAGES:
        target = "—"
        for rep in (cuda, wgpu, coop):
            row = next((r for r in (rep or {}).get("performance", []) if r["stage"] == stage), None)
            if row and row.get("target"):
                target = row["target"]
                break
        rows.append([LABELS[stage], visword_cell(cuda, stage), visword_cell(wgpu, stage), torch_cell(eager, stage, "eager"),
                     torch_cell(comp, stage, "compile"), target])
    if dinov2 is not None:
        for stage in ("vision", "end_to_end"):
            rows.append([f"dinov2-lisa-7b: {LABELS[stage]}", visword_cell(dinov2, stage), "", "", "", "—"])
    peaks = [(cuda or {}).get("device_peaks"), (wgpu or {}).get("device_peaks"), (eager or {}).get("peaks"), (comp or {}).get("peaks")]
    rows.append(["copy bandwidth (GB/s)"] + [f"{p['copy_gb_per_s']:.0f}" if p else "—" for p in peaks] + ["measured"])
    gemm = []
    for p in peaks:
        if not p:
            gemm.append("—")
        elif "gemm_tflops" in p:
            gemm.append(f"{p['gemm_tflops']:.3g} (f32×{p['gemm_weight_dtype']})")
        else:
            gemm.append(f"{p['bf16_matmul_tflops']:.3g} (bf16)")
    rows.append(["GEMM TFLOP/s"] + gemm + ["measured"])
    # Encoders overlapped (vision tower beside SAM's encoder), the end-to-end figure's.
    def overlapped_cell(rep):
        runs = (rep or {}).get("runs", [])
        ms = next((r["stages_ms"].get("encoders_overlapped") for r in runs if r["stages_ms"].get("encoders_overlapped")), None)
        return ms_text(ms)
    rows.append(["vision ∥ SAM encoders, overlapped", overlapped_cell(cuda), overlapped_cell(wgpu), "", "", "—"])

    # The superpixel stage's two parts (issue 5's 60% bar is on the post-processing: mask
    # stats, NMS, level selection, painting and the host steps after the decoder).
    def split_cell(rep, key):
        runs = (rep or {}).get("runs", [])
        return ms_text(next((r["stages_ms"].get(key) for r in runs if r["stages_ms"].get(key) is not None), None))

    rows.append(["superpixels: prompt enc. + mask decoder", split_cell(cuda, "superpixels_decoder"), split_cell(wgpu, "superpixels_decoder"), "", "", "—"])
    rows.append(["superpixels: post-processing", split_cell(cuda, "superpixels_postprocess"), split_cell(wgpu, "superpixels_postprocess"), "", "", "—"])

    def batches_cell(rep):
        t = (rep or {}).get("superpixel_batches") or []
        return " · ".join(f"{b['points_per_batch']}: {ms_text(b['ms']) if b.get('ms') is not None else 'failed'}" for b in t) or "—"

    rows.append(["superpixels by points per batch", batches_cell(cuda), batches_cell(wgpu), "", "", "—"])

    # Benches with one switch changed, each a column after its backend's (wgpu's first, so
    # inserting CUDA's after them leaves both in place).
    def coop_state(rep):
        dev = rep.get("device", "")
        return "in use" if dev.endswith(", cooperative-matrix GEMM)") else ("self-check failed" if "GEMM off:" in dev else "not offered")

    for rep, title, state, col in reversed([
        (simt_attn, "cuda, f32 attention", None, 2),
        (nofold, "cuda, SAM decoder projected", None, 2),
        (fold_simt, "cuda, two-way f32 kernels", None, 2),
        (nofused, "cuda, small linears on cuBLAS", None, 2),
        (nolt, "cuda, no cuBLASLt", None, 2),
        (kvf32, "cuda, f32 KV cache", None, 2),
        (coop, "wgpu coop-matrix", coop_state, 3),
        (tile64, "wgpu 64-tile GEMM only", None, 3),
        (checked, "wgpu, wgpu's shader checks", None, 3),
        (gemv_batched, "wgpu, batched GEMV loads", None, 3),
    ]):
        if rep is None:
            continue
        header.insert(col, title)
        p = rep.get("device_peaks")
        by_label = {LABELS[stage]: visword_cell(rep, stage) for stage in STAGES}
        by_label["copy bandwidth (GB/s)"] = f"{p['copy_gb_per_s']:.0f}" if p else "—"
        by_label["GEMM TFLOP/s"] = f"{p['gemm_tflops']:.3g}" if p and "gemm_tflops" in p else "—"
        for i, r in enumerate(rows):
            r.insert(col, (state(rep) if state else "") if i == 0 else by_label.get(r[0], ""))
    failed = [f"{k}: {v[0]}" for k, v in status.items() if v[0] not in ("ok", "skipped")]
    skipped = [f"{k} ({v[2] if len(v) > 2 else ''})" for k, v in status.items() if v[0] == "skipped"]

    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    print("(times per call; decode in tok/s; (n%) = share of the roofline at the measured copy bandwidth / GEMM rate)")
    for n in notes:
        print(f"note: {n}")
    if failed:
        print("steps not ok: " + "; ".join(failed))
    if skipped:
        print("skipped: " + "; ".join(skipped))


if __name__ == "__main__":
    sys.exit(main())
