#!/usr/bin/env bash
# CPU benchmarks, visword and PyTorch/transformers side by side in one run, on SmolLM2-135M and
# the per-op shapes. Prints a markdown summary (the numbers BENCHMARKS.md records); full logs go
# to $LOG_DIR (default target/bench-cpu).
#
#   tools/bench_cpu.sh            # needs python3 with torch + transformers
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-target/bench-cpu}
mkdir -p "$LOG_DIR"
THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS

./tools/fetch_smollm2.sh >/dev/null
cargo build --release --quiet
V=target/release/visword
[ -d .models/smollm2 ] || $V convert .models/SmolLM2-135M-Instruct.Q4_1.gguf .models/smollm2 >/dev/null
[ -d .models/smollm2-bf16 ] || $V convert .models/SmolLM2-135M-Instruct.Q4_1.gguf .models/smollm2-bf16 --dtype bf16 >/dev/null

IDS=$(python3 -c "import random; r=random.Random(0); print(','.join(str(r.randrange(100,49000)) for _ in range(128)))")
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "## $(date -u +%F) · $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) · $THREADS threads · commit $(git rev-parse --short HEAD)"
echo
echo "### SmolLM2-135M-Instruct: 128-token prompt, then 64 greedy tokens"
echo
echo "Prefill: warm median in one process (visword: criterion \`llm/prefill128\`; transformers: median of 5"
echo "after a warm-up). Decode: 64 greedy tokens through \`visword generate\` (median of 5 processes) and"
echo "transformers' generate. First token: wall time from process start, cold."
echo
# The criterion parser shared by both tables: benchmark name -> median seconds.
crit_medians() {
  python3 - "$1" <<'PY'
import re, sys
unit = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
for m in re.finditer(r"^(\S+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", open(sys.argv[1]).read(), re.M):
    print(m.group(1), float(m.group(2)) * unit[m.group(3)])
PY
}
cargo bench --quiet --bench ops -- "llm/prefill128" 2>/dev/null > "$LOG_DIR/llm_prefill.log" || true
echo "| engine | weights | prefill tok/s | decode tok/s | first token (ms) |"
echo "|---|---|---|---|---|"
for dt in f32 bf16; do
  dir=.models/smollm2; [ $dt = bf16 ] && dir=.models/smollm2-bf16
  : > "$LOG_DIR/visword_$dt.log"
  for i in 1 2 3 4 5; do
    $V generate --backend cpu --model $dir --input-ids "$IDS" --greedy --max-new-tokens 64 --ignore-eos 2>>"$LOG_DIR/visword_$dt.log" >/dev/null
  done
  pre=$(crit_medians "$LOG_DIR/llm_prefill.log" | awk -v n="llm/prefill128/$dt" '$1 == n {printf "%.0f", 128 / $2}')
  dec=$(grep -o 'decode: 64 tokens, [0-9.]*' "$LOG_DIR/visword_$dt.log" | awk '{print $4}' | median)
  ftt=$(grep -o 'first token after [0-9]*' "$LOG_DIR/visword_$dt.log" | awk '{print $4}' | median)
  echo "| visword cpu | $dt | ${pre:-—} | $dec | $ftt |"
  python3 tools/bench_torch.py --threads "$THREADS" llm .models/smollm2 --dtype $dt 2>/dev/null | tail -1 | tee "$LOG_DIR/torch_$dt.json" |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| {d['engine']} | $dt | {d['prefill_tok_s']:.0f} | {d['decode_tok_s']:.1f} | — |\")"
done
echo
echo "### Ops (criterion median; GEMM in GFLOP/s, GEMV in GB/s of weights streamed)"
echo
cargo bench --quiet --bench ops -- "gemm_f32|gemv|copy|read|attention|small_ops" 2>/dev/null > "$LOG_DIR/ops.log" || true
python3 tools/bench_torch.py --threads "$THREADS" gemm 2>/dev/null > "$LOG_DIR/torch_gemm.jsonl"
crit_medians "$LOG_DIR/ops.log" > "$LOG_DIR/ops_medians.txt"
python3 - "$LOG_DIR/ops_medians.txt" "$LOG_DIR/torch_gemm.jsonl" <<'PY'
import json, sys
rows = {name: float(t) for name, t in (line.split() for line in open(sys.argv[1]))}
torch = {j["op"]: j["median_ms"] * 1e-3 for j in map(json.loads, open(sys.argv[2]))}
print("| op | visword | PyTorch | visword / PyTorch |")
print("|---|---|---|---|")
for name, t in rows.items():
    if name.startswith("gemm_f32/"):
        m, k, n = map(int, name.split("/")[1].split("x"))
        fl = 2 * m * n * k
        tt = torch.get(name)
        print(f"| {name} | {fl / t / 1e9:.0f} GFLOP/s ({t*1e3:.3f} ms) | {fl / tt / 1e9:.0f} GFLOP/s ({tt*1e3:.3f} ms) | {tt / t:.0%} |" if tt else f"| {name} | {fl/t/1e9:.0f} GFLOP/s | — | — |")
for name, t in rows.items():
    if name.startswith("gemv/"):
        dt, shape = name.split("/")[1:]
        k, n = map(int, shape.split("x"))
        size = {"f32": 4, "bf16": 2, "f16": 2}[dt]
        print(f"| {name} | {k * n * size / t / 1e9:.1f} GB/s ({t*1e6:.0f} µs) | — | — |")
    elif name.startswith("copy/"):
        print(f"| {name} (read + write) | {2 * 256 * 2**20 / t / 1e9:.1f} GB/s | — | — |")
    elif name.startswith("read/"):
        print(f"| {name} (all threads) | {512 * 2**20 / t / 1e9:.1f} GB/s | — | — |")
    elif name.startswith("attention/"):
        print(f"| {name} | {t*1e3:.2f} ms | — | — |")
    elif name.startswith("small_ops/"):
        print(f"| {name} | {t*1e6:.1f} µs | — | — |")
PY
