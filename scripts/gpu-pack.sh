#!/usr/bin/env bash
# Build here what scripts/gpu-check.sh runs on a GPU machine that has no Rust toolchain, into
# gpu-bin/ (or the folder given as $1):
#
#   visword        the release binary (`visword bench --backend cuda|wgpu`)
#   gpu            the GPU test binary (tests/gpu/main.rs: ops, attention, models on every GPU backend)
#   cuda_kernels   the CUDA kernel test binary (tests/cuda_kernels.rs), when the tree has it
#   vulkan/*.deb   the Vulkan loader (libvulkan1) and GLVND, for a machine whose image lacks them
#   manifest.txt   commit, build date, file sizes
#
# Binaries are stripped and gzipped (visword.gz, ...: the embedded PTX is text, so a 27 MB binary
# packs to ~8 MB; gpu-check.sh unpacks them); the folder must stay under 64 MiB (what a device
# run may carry with the tree), and the total is printed. gpu-bin/ is listed in .git/info/exclude, so it travels only
# when a run names it in `carry`.
#
#   scripts/gpu-pack.sh [OUT_DIR]        # then: run scripts/gpu-check.sh there, carrying gpu-bin
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-bin}
limit=$((64 << 20))

exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
for pat in "/$out/" "/gpu-out/"; do
  grep -qxF "$pat" "$exclude" 2>/dev/null || echo "$pat" >>"$exclude"
done

echo "== cargo build --release" >&2
cargo build --release --bin visword
# Only the test targets the GPU machine runs (the whole suite would take a CPU-only machine
# many minutes more to build).
tests=(--test gpu)
[ -f tests/cuda_kernels.rs ] && tests+=(--test cuda_kernels)
echo "== cargo test --release --no-run ${tests[*]}" >&2
# The test executables' paths, from cargo's JSON messages (one "executable" per test target).
msgs=$(cargo test --release --no-run "${tests[@]}" --message-format=json-render-diagnostics)
exe_of() {
  python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name and m["target"]["kind"] == ["test"]:
        print(m["executable"])
' "$1" <<<"$msgs" | tail -1
}
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

rm -rf "$out"
mkdir -p "$out"
cp "$target_dir/release/visword" "$out/visword"
gpu=$(exe_of gpu)
[ -n "$gpu" ] || { echo "error: cargo built no \`gpu\` test binary (tests/gpu/main.rs)" >&2; exit 1; }
cp "$gpu" "$out/gpu"
kernels=$(exe_of cuda_kernels)
if [ -n "$kernels" ]; then
  cp "$kernels" "$out/cuda_kernels"
else
  echo "note: no cuda_kernels test target in this tree; gpu-check.sh will skip it" >&2
fi
strip "$out"/visword "$out"/gpu ${kernels:+"$out"/cuda_kernels}
gzip -9 "$out"/visword "$out"/gpu ${kernels:+"$out"/cuda_kernels}

# The Vulkan loader, for GPU images without one (gpu-check.sh unpacks it only when needed), and
# the GLVND libraries NVIDIA's Vulkan driver (libGLX_nvidia) links against: without them the
# loader finds the driver manifest but no adapter.
mkdir -p "$out/vulkan"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-pack-apt-lists)
mkdir -p /tmp/gpu-pack-apt-lists/partial
if ! (apt-get "${o[@]}" update -qq >/dev/null 2>&1 && cd "$out/vulkan" && apt-get "${o[@]}" download -qq libvulkan1 libglvnd0 libegl1 libglx0 libgl1 libopengl0 libgles2 >/dev/null 2>&1); then
  echo "note: could not download libvulkan1; gpu-check.sh will rely on the machine's loader" >&2
fi
rmdir "$out/vulkan" 2>/dev/null || true

{
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!'"$out" 2>/dev/null || echo -dirty)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  echo "manifest_dir: $PWD"
  (cd "$out" && find . -type f ! -name manifest.txt -printf '%P %s\n' | sort)
} >"$out/manifest.txt"

total=$(du -sb "$out" | cut -f1)
ls -l "$out" "$out"/vulkan 2>/dev/null | grep -v '^total' >&2 || true
awk -v o="$out" -v t="$total" 'BEGIN { printf "gpu-bin: %s, %.1f MiB in all (limit 64 MiB)\n", o, t / 1048576 }'
if [ "$total" -ge "$limit" ]; then
  echo "error: $out is $total bytes, over the 64 MiB a device run can carry" >&2
  exit 1
fi
