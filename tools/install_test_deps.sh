#!/usr/bin/env bash
# Install what the test suite needs beyond Rust, idempotently:
#  * Mesa's software Vulkan driver (lavapipe), so the wgpu backend's shaders run on a CPU-only
#    machine;
#  * NVIDIA's nvcc 13.0 from PyPI wheels, so build.rs compile-checks every CUDA kernel for sm_80
#    and sm_90 (pinned to 13.0.x: newer wheels emit a PTX ISA that CUDA 13.0 drivers reject), and
#    NVRTC, so the run-time compile path is checked too;
#  * a C++ compiler (g++), which builds kernels/*.cu against the host CUDA emulator of
#    tests/cuda_emu so the kernels run on the CPU.
# Each step that cannot run here says so on stderr and the suite goes on; CI then fails the
# tests that require it (VISWORD_REQUIRE).
set -uo pipefail

sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq >/dev/null || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if ! apt_install mesa-vulkan-drivers libvulkan1; then
    echo "warning: could not install mesa-vulkan-drivers; the wgpu tests will have no adapter" >&2
  fi
fi

if ! command -v "${CXX:-g++}" >/dev/null; then
  if ! apt_install g++; then
    echo "warning: could not install g++; the emulated CUDA kernel tests will skip" >&2
  fi
fi

cuda_wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88)
if ! python3 -c 'import importlib.util as u, sys; import nvidia, os; sys.exit(0 if any(os.path.exists(os.path.join(p, "cu13/bin/nvcc")) for p in nvidia.__path__) else 1)' 2>/dev/null \
   && ! command -v nvcc >/dev/null; then
  if ! python3 -m pip install --quiet --disable-pip-version-check "${cuda_wheels[@]}" >/dev/null 2>&1; then
    echo "warning: could not install nvcc from PyPI; CUDA kernels will be compiled at run time only" >&2
  fi
fi
