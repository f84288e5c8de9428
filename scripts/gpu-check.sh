#!/usr/bin/env bash
# Check visword on a GPU machine that has no Rust toolchain, from the repo root, with the prebuilt
# binaries of scripts/gpu-pack.sh (in gpu-bin/, or $BIN):
#
#   tests-cuda     the GPU test binary on CUDA (VISWORD_REQUIRE=cuda: a missing device fails)
#   kernels        the CUDA kernel tests (cuda_kernels), when packed
#   timings-cuda   cuda_kernels' timings (VISWORD_CUDA_TIMINGS=1): GEMV bandwidth per dtype, GEMMs,
#                  and SAM's two-way ops (TF32 and f32 kernels) beside the projection they replace
#   tests-wgpu     the GPU test binary on wgpu, when a Vulkan driver is there (VISWORD_REQUIRE=wgpu;
#                  VISWORD_WGPU_COOP=0, so a fault in the experimental cooperative matrices cannot
#                  take the other tests down with it)
#   tests-wgpu-coop  the GEMM tests with cooperative matrices requested (they compare the
#                  cooperative-matrix GEMM with the CPU), then the model tests with it on
#                  throughout (VISWORD_WGPU_COOP=1), NVIDIA only
#   timings-wgpu   wgpu's GEMM kernels timed at the stack's shapes (ignored test
#                  wgpu_gemm_timings), on NVIDIA's Vulkan driver
#   bench-cuda     visword bench --backend cuda --preset lisa-7b --json
#   bench-cuda-eager  the same with VISWORD_CUDA_GRAPH=0 (decode steps launched op by op)
#   bench-cuda-simt-attn  the same with VISWORD_CUDA_ATTN=simt (f32 flash attention, no tensor cores)
#   bench-cuda-nofold  the same with VISWORD_SAM_FOLD=0 (the mask decoder's image tokens projected,
#                  not folded into the TF32 two-way kernels)
#   bench-cuda-fold-simt  the same with VISWORD_CUDA_TWO_WAY=simt (folded, on the f32 two-way kernels)
#   bench-cuda-nofused  the same with VISWORD_CUDA_GEMM_FUSED=0 (small bf16 linears as round + cuBLAS +
#                  epilogue, not one launch of kernels/gemm.cu)
#   bench-cuda-nolt  the same with VISWORD_CUDA_LT=0 (no cuBLASLt: bias and residual in an epilogue
#                  pass after each bf16 GEMM, the mask decoder's image-side linears on the bf16 path)
#   bench-cuda-kvf32  the same with VISWORD_CUDA_KV=f32 (the LLM's KV cache in f32, not bf16)
#   profile-cuda   the same with VISWORD_PROFILE=1 (one run): device time per op from timing events
#                  (no syncs), per stage with its wall time, in its log
#   torch-eager    tools/bench_torch.py, eager (same card, same run)
#   bench-dinov2   visword bench --backend cuda --preset dinov2-lisa-7b --json
#   bench-wgpu     visword bench --backend wgpu (lisa-7b on a hardware adapter, tiny on a software
#                  one), VISWORD_WGPU_COOP=0
#   bench-wgpu-coop  the same with VISWORD_WGPU_COOP=1 (the cooperative-matrix GEMM), NVIDIA only
#   bench-wgpu-tile64  the same with VISWORD_WGPU_GEMM=tile64 (the 64×64-tile GEMM only), NVIDIA only
#   bench-wgpu-checked  the same with VISWORD_WGPU_CHECKS=1 (wgpu's injected shader checks), NVIDIA only
#   bench-wgpu-gemv-batched  the same with VISWORD_WGPU_GEMV=batched (eight weight loads in flight
#                  per GEMV lane), NVIDIA only
#   profile-wgpu   visword bench --backend wgpu with VISWORD_PROFILE=1 (one run): device time per op from
#                  timestamp queries (synced where the driver lacks them), in its log
#   torch-compile  tools/bench_torch.py, torch.compile
#
#   scripts/gpu-check.sh [STEP...]       # default: every step, in the order above
#
# Each step runs under its own timeout, capped by what is left of BUDGET, so one hang cannot eat
# the rest; a step whose device is missing says so and is skipped. Full logs and the JSON reports
# go under $OUT (default ./gpu-out): summary.txt, the bench JSONs and logs.tar.gz (at most 8
# files, so a device run brings them all back). ONE short summary table is printed last.
#
# Environment: BIN (gpu-bin), OUT (gpu-out), BUDGET (540 s for all steps), RUNS (3 timed bench
# runs), DECODE_TOKENS (8), TEST_THREADS (4), T_<STEP> (a step's own cap in seconds, e.g.
# T_BENCH_CUDA=200), VK_DRIVER_FILES (found automatically for NVIDIA's driver).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=${BIN:-gpu-bin}
OUT=${OUT:-gpu-out}
BUDGET=${BUDGET:-540}
RUNS=${RUNS:-3}
DECODE_TOKENS=${DECODE_TOKENS:-8}
TEST_THREADS=${TEST_THREADS:-4}
ALL_STEPS=(tests-cuda kernels timings-cuda tests-wgpu tests-wgpu-coop timings-wgpu bench-cuda bench-cuda-eager bench-cuda-simt-attn bench-cuda-nofold bench-cuda-fold-simt bench-cuda-nofused bench-cuda-nolt bench-cuda-kvf32 profile-cuda torch-eager bench-dinov2 bench-wgpu bench-wgpu-coop bench-wgpu-tile64 bench-wgpu-checked bench-wgpu-gemv-batched profile-wgpu torch-compile)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
  [[ " ${ALL_STEPS[*]} " == *" $s "* ]] || { echo "error: unknown step '$s'; steps: ${ALL_STEPS[*]}" >&2; exit 2; }
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
logs=$(mktemp -d /tmp/gpu-check-logs.XXXXXX)
# gpu-pack.sh gzips the binaries to fit what a run can carry: unpack them into a folder of
# their own (the carried one may be read-only), next to links to the rest of $BIN.
if ls "$BIN"/*.gz >/dev/null 2>&1; then
  unpacked=$(mktemp -d /tmp/gpu-check-bin.XXXXXX)
  for f in "$BIN"/*; do
    case $f in
      *.gz) gzip -dc "$f" >"$unpacked/$(basename "$f" .gz)" && chmod +x "$unpacked/$(basename "$f" .gz)" ;;
      *) ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$unpacked/$(basename "$f")" ;;
    esac
  done
  BIN=$unpacked
fi
status="$logs/status.tsv"
: >"$status"
t0=$(date +%s)
say() { echo "[gpu-check $(($(date +%s) - t0))s] $*" | tee -a "$logs/gpu-check.log" >&2; }

# ---- the machine ---------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm)"
  [ -f "$BIN/manifest.txt" ] && sed 's/^/gpu-bin /' "$BIN/manifest.txt"
} >"$logs/machine.txt"
have_nvidia=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  have_nvidia=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader \
    | sed 's/^/gpu: /' | tee -a "$logs/machine.txt" >&2
  nvidia-smi >"$logs/nvidia-smi.txt" 2>&1
else
  say "no NVIDIA GPU here (nvidia-smi finds none): the CUDA steps are skipped"
fi

# ---- Vulkan: the loader (carried in $BIN/vulkan when the image lacks it) and NVIDIA's driver ------
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  if ls "$BIN"/vulkan/*.deb >/dev/null 2>&1; then
    vk=$(mktemp -d /tmp/gpu-check-vulkan.XXXXXX)
    for f in "$BIN"/vulkan/*.deb; do dpkg -x "$f" "$vk"; done
    export LD_LIBRARY_PATH="$vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "Vulkan loader unpacked from $BIN/vulkan"
  fi
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES=$nvidia_icd
fi
icds=$(ls ${VK_DRIVER_FILES:-} ${VK_ICD_FILENAMES:-} /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json \
  /usr/local/share/vulkan/icd.d/*.json 2>/dev/null | tr ':' '\n' | sort -u)
vulkan=none
if ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || [ -n "${vk:-}" ]; then
  if grep -qil nvidia $icds 2>/dev/null && [ $have_nvidia = 1 ]; then
    vulkan=nvidia
  elif [ -n "$icds" ]; then
    vulkan=software
  fi
fi
echo "vulkan: $vulkan (${VK_DRIVER_FILES:-driver manifests from the system folders})" | tee -a "$logs/machine.txt" >&2

torch_cuda=0
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then torch_cuda=1; fi

# ---- step runner -----------------------------------------------------------------------------------
cap_of() { # default cap of a step, overridable by T_<STEP>
  local var="T_$(echo "$1" | tr 'a-z-' 'A-Z_')"
  local def
  case $1 in
    tests-cuda) def=120 ;; kernels) def=60 ;; timings-cuda) def=60 ;; tests-wgpu) def=120 ;; tests-wgpu-coop) def=40 ;; timings-wgpu) def=60 ;; bench-cuda) def=150 ;; bench-cuda-eager) def=150 ;; bench-cuda-simt-attn) def=150 ;; bench-cuda-nofold) def=150 ;; bench-cuda-fold-simt) def=150 ;; bench-cuda-nofused) def=150 ;; bench-cuda-nolt) def=150 ;; bench-cuda-kvf32) def=150 ;; profile-cuda) def=90 ;;
    torch-eager) def=120 ;; bench-dinov2) def=110 ;; bench-wgpu) def=170 ;; bench-wgpu-coop) def=150 ;; bench-wgpu-tile64) def=150 ;; bench-wgpu-checked) def=150 ;; bench-wgpu-gemv-batched) def=150 ;; profile-wgpu) def=150 ;; torch-compile) def=200 ;;
  esac
  echo "${!var:-$def}"
}

# run_step NAME LOGFILE STDOUT_FILE CMD... : under min(cap, what the budget has left)
run_step() {
  local name=$1 log=$2 stdout=$3
  shift 3
  local left=$((BUDGET - ($(date +%s) - t0) - 5))
  local cap
  cap=$(cap_of "$name")
  local t=$((cap < left ? cap : left))
  if [ "$t" -lt 10 ]; then
    say "$name: skipped, the budget is spent"
    printf '%s\tskipped\t0\tno time left\n' "$name" >>"$status"
    return
  fi
  say "$name: $* (timeout ${t}s)"
  local s
  s=$(date +%s)
  timeout -k 10 "$t" "$@" >"$stdout" 2>"$log"
  local rc=$?
  local took=$(($(date +%s) - s))
  local what=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what=timeout
  [ $rc -ne 0 ] && [ $what = ok ] && what="exit $rc"
  say "$name: $what after ${took}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$what" "$took" "$rc" >>"$status"
}

skip() { say "$1: skipped ($2)"; printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$status"; }

want() { [[ " ${steps[*]} " == *" $1 "* ]]; }
have_bin() { [ -x "$BIN/$1" ]; }

export VISWORD_FIXTURES="$root/tests/fixtures"
for step in "${ALL_STEPS[@]}"; do
  want "$step" || continue
  case $step in
    tests-cuda)
      if [ $have_nvidia = 0 ]; then skip "$step" "no NVIDIA GPU"
      elif ! have_bin gpu; then skip "$step" "$BIN/gpu missing (scripts/gpu-pack.sh)"
      else VISWORD_BACKENDS=cuda VISWORD_REQUIRE=cuda run_step "$step" "$logs/tests-cuda.log" "$logs/tests-cuda.out" "$BIN/gpu" --test-threads="$TEST_THREADS"
      fi ;;
    kernels)
      if [ $have_nvidia = 0 ]; then skip "$step" "no NVIDIA GPU"
      elif ! have_bin cuda_kernels; then skip "$step" "$BIN/cuda_kernels not packed"
      else VISWORD_BACKENDS=cuda VISWORD_REQUIRE=cuda run_step "$step" "$logs/kernels.log" "$logs/kernels.out" "$BIN/cuda_kernels" --test-threads="$TEST_THREADS"
      fi ;;
    timings-cuda)
      if [ $have_nvidia = 0 ]; then skip "$step" "no NVIDIA GPU"
      elif ! have_bin cuda_kernels; then skip "$step" "$BIN/cuda_kernels not packed"
      else VISWORD_CUDA_TIMINGS=1 run_step "$step" "$logs/timings-cuda.log" "$logs/timings-cuda.out" "$BIN/cuda_kernels" cuda_timings --nocapture --test-threads=1
      fi ;;
    tests-wgpu)
      if [ $vulkan = none ]; then skip "$step" "no Vulkan driver"
      elif ! have_bin gpu; then skip "$step" "$BIN/gpu missing (scripts/gpu-pack.sh)"
      else VISWORD_WGPU_COOP=0 VISWORD_BACKENDS=wgpu VISWORD_REQUIRE=wgpu run_step "$step" "$logs/tests-wgpu.log" "$logs/tests-wgpu.out" "$BIN/gpu" --test-threads="$TEST_THREADS"
      fi ;;
    tests-wgpu-coop)
      if [ $vulkan != nvidia ]; then skip "$step" "no NVIDIA Vulkan driver"
      elif ! have_bin gpu; then skip "$step" "$BIN/gpu missing (scripts/gpu-pack.sh)"
      else VISWORD_BACKENDS=wgpu VISWORD_REQUIRE=wgpu run_step "$step" "$logs/tests-wgpu-coop.log" "$logs/tests-wgpu-coop.out" bash -c \
        '"$1" ops::linear_gemv_and_gemm ops::batched_matmul --nocapture --test-threads=1 && VISWORD_WGPU_COOP=1 "$1" models:: --test-threads=1' _ "$BIN/gpu"
      fi ;;
    timings-wgpu)
      if [ $vulkan != nvidia ]; then skip "$step" "no NVIDIA Vulkan driver"
      elif ! have_bin gpu; then skip "$step" "$BIN/gpu missing (scripts/gpu-pack.sh)"
      else VISWORD_BACKENDS=wgpu VISWORD_REQUIRE=wgpu run_step "$step" "$logs/timings-wgpu.log" "$logs/timings-wgpu.out" "$BIN/gpu" wgpu_gemm_timings --ignored --nocapture --test-threads=1
      fi ;;
    bench-cuda | bench-dinov2)
      preset=lisa-7b
      [ $step = bench-dinov2 ] && preset=dinov2-lisa-7b
      if [ $have_nvidia = 0 ]; then skip "$step" "no NVIDIA GPU"
      elif ! have_bin visword; then skip "$step" "$BIN/visword missing"
      else run_step "$step" "$logs/$step.log" "$OUT/visword-cuda-$preset.json" \
        "$BIN/visword" bench --backend cuda --preset $preset --json --runs "$RUNS" --decode-tokens "$DECODE_TOKENS"
      fi ;;
    bench-cuda-eager | bench-cuda-simt-attn | bench-cuda-nofold | bench-cuda-fold-simt | bench-cuda-nofused | bench-cuda-nolt | bench-cuda-kvf32)
      case $step in
        bench-cuda-eager) switch=VISWORD_CUDA_GRAPH=0 ;;
        bench-cuda-simt-attn) switch=VISWORD_CUDA_ATTN=simt ;;
        bench-cuda-nofold) switch=VISWORD_SAM_FOLD=0 ;;
        bench-cuda-fold-simt) switch=VISWORD_CUDA_TWO_WAY=simt ;;
        bench-cuda-nofused) switch=VISWORD_CUDA_GEMM_FUSED=0 ;;
        bench-cuda-nolt) switch=VISWORD_CUDA_LT=0 ;;
        bench-cuda-kvf32) switch=VISWORD_CUDA_KV=f32 ;;
      esac
      if [ $have_nvidia = 0 ]; then skip "$step" "no NVIDIA GPU"
      elif ! have_bin visword; then skip "$step" "$BIN/visword missing"
      else (export "$switch"; run_step "$step" "$logs/$step.log" "$OUT/visword-${step#bench-}-lisa-7b.json" \
        "$BIN/visword" bench --backend cuda --preset lisa-7b --json --runs "$RUNS" --decode-tokens "$DECODE_TOKENS")
      fi ;;
    profile-cuda)
      if [ $have_nvidia = 0 ]; then skip "$step" "no NVIDIA GPU"
      elif ! have_bin visword; then skip "$step" "$BIN/visword missing"
      else VISWORD_PROFILE=1 run_step "$step" "$logs/profile-cuda.log" "$logs/profile-cuda.out" \
        "$BIN/visword" bench --backend cuda --preset lisa-7b --runs 1 --decode-tokens 4
      fi ;;
    bench-wgpu)
      if [ $vulkan = none ]; then skip "$step" "no Vulkan driver"
      elif ! have_bin visword; then skip "$step" "$BIN/visword missing"
      elif [ $vulkan = nvidia ]; then
        VISWORD_WGPU_COOP=0 run_step "$step" "$logs/$step.log" "$OUT/visword-wgpu-lisa-7b.json" \
          "$BIN/visword" bench --backend wgpu --preset lisa-7b --json --runs 1 --decode-tokens "$DECODE_TOKENS"
      else
        # A software adapter runs the 7B shapes for hours: the tiny preset shows the path works.
        run_step "$step" "$logs/$step.log" "$OUT/visword-wgpu-tiny.json" \
          "$BIN/visword" bench --backend wgpu --preset tiny --points-per-side 8 --json --runs 1 --decode-tokens 2
      fi ;;
    bench-wgpu-coop | bench-wgpu-tile64 | bench-wgpu-checked | bench-wgpu-gemv-batched)
      case $step in
        bench-wgpu-coop) switch=VISWORD_WGPU_COOP=1 ;;
        bench-wgpu-tile64) switch=VISWORD_WGPU_GEMM=tile64 ;;
        bench-wgpu-checked) switch=VISWORD_WGPU_CHECKS=1 ;;
        bench-wgpu-gemv-batched) switch=VISWORD_WGPU_GEMV=batched ;;
      esac
      if [ $vulkan != nvidia ]; then skip "$step" "no NVIDIA Vulkan driver"
      elif ! have_bin visword; then skip "$step" "$BIN/visword missing"
      else (export VISWORD_WGPU_COOP=0 "$switch"; run_step "$step" "$logs/$step.log" "$OUT/visword-${step#bench-}-lisa-7b.json" \
        "$BIN/visword" bench --backend wgpu --preset lisa-7b --json --runs 1 --decode-tokens "$DECODE_TOKENS")
      fi ;;
    profile-wgpu)
      if [ $vulkan != nvidia ]; then skip "$step" "no NVIDIA Vulkan driver"
      elif ! have_bin visword; then skip "$step" "$BIN/visword missing"
      else VISWORD_PROFILE=1 run_step "$step" "$logs/profile-wgpu.log" "$logs/profile-wgpu.out" \
        "$BIN/visword" bench --backend wgpu --preset lisa-7b --runs 1 --decode-tokens 4
      fi ;;
    torch-eager)
      if [ $torch_cuda = 1 ]; then
        run_step "$step" "$logs/$step.log" "$logs/torch-eager.txt" python3 tools/bench_torch.py --modes eager --json "$OUT/torch-eager.json" -v
      elif python3 -c 'import torch, transformers' 2>/dev/null; then
        # No GPU for PyTorch: the tiny shapes on the CPU prove the script runs.
        run_step "$step" "$logs/$step.log" "$logs/torch-eager.txt" python3 tools/bench_torch.py --tiny --modes eager --json "$OUT/torch-eager-tiny-cpu.json" -v
      else skip "$step" "no PyTorch + transformers"
      fi ;;
    torch-compile)
      if [ $torch_cuda = 1 ]; then
        run_step "$step" "$logs/$step.log" "$logs/torch-compile.txt" python3 tools/bench_torch.py --modes compile --json "$OUT/torch-compile.json" -v
      else skip "$step" "PyTorch has no GPU, and compiling on a CPU takes minutes"
      fi ;;
  esac
done

# ---- summary ------------------------------------------------------------------------------------
for f in "$OUT"/*.json; do [ -s "$f" ] || rm -f "$f"; done
python3 scripts/gpu-summary.py --logs "$logs" --out "$OUT" >"$logs/summary.txt" 2>"$logs/summary.err" \
  || { echo "summary failed:"; cat "$logs/summary.err"; } >>"$logs/summary.txt"
cp "$logs/summary.txt" "$OUT/summary.txt"
say "logs: $OUT/logs.tar.gz; reports: $(cd "$OUT" && ls *.json 2>/dev/null | tr '\n' ' ')"
tar -czf "$OUT/logs.tar.gz" -C "$logs" . 2>/dev/null
rm -rf "$logs"
cat "$OUT/summary.txt"
