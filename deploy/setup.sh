#!/usr/bin/env bash
# fedtune set-up: installs the Debian 12 packages fedtune needs (only the missing ones), then configures and builds
# incrementally into build/ (Release with debug info). Executables land in build/bin/. Idempotent: run it as often
# as you like; a second run installs nothing and rebuilds only what changed.
#
# Environment:
#   FEDTUNE_BUILD_DIR   build folder (default: build, beside this repository's CMakeLists.txt)
#   FEDTUNE_JOBS        parallel compile jobs (default: number of cores)
#   FEDTUNE_BUILD_TARGETS  build only these targets (space-separated; default: everything)
#   CMAKE_PREFIX_PATH   e.g. a CUDA LibTorch to build against instead of Debian's CPU libtorch-dev
#   FEDTUNE_SKIP_APT=1  do not install packages (for machines prepared by other means)
#   FEDTUNE_SKIP_BUILD=1  install the packages only
#   FEDTUNE_SANITIZE    address (ASan+UBSan) or thread (TSan): an instrumented build (use its own build folder)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${FEDTUNE_BUILD_DIR:-$root/build}"
jobs="${FEDTUNE_JOBS:-$(nproc)}"

packages=(
  cmake ninja-build g++ ccache pkg-config
  libtorch-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev libssl-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopencv-dev libdcmtk-dev libgoogle-glog-dev
  # JPEG 2000 in DICOM: OpenJPEG decodes it (common/imaging/jpeg2000.h); GDCM only for the decode-speed benchmark.
  libopenjp2-7-dev libgdcm-dev
  nlohmann-json3-dev
  libopenblas0-pthread
  # Independent references used by tests (Debian's Python, never downloads):
  python3 python3-numpy python3-scipy python3-sklearn python3-torch python3-torchvision python3-pydicom python3-yaml
  # A real HTTP CONNECT proxy for tests/integration/proxy_test.sh (the test starts its own on 127.0.0.1):
  tinyproxy
  # Operations (issue 15): Prometheus client library, the dashboard's HTTP server, promtool (checks the metrics
  # exposition in tests) and headless Chromium (the dashboard's browser test).
  prometheus-cpp-dev libcpp-httplib-dev prometheus chromium chromium-driver
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -gt 0 && "${FEDTUNE_SKIP_APT:-0}" != 1 ]]; then
  echo "fedtune setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then
    sudo_cmd=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "fedtune setup: error: these packages are missing and this user cannot install them (not root, no sudo):" >&2
    echo "  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "fedtune setup: all Debian packages present"
fi

# Debian's default BLAS alternative is the slow reference BLAS; prefer OpenBLAS when it is installed.
if [[ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 && $(id -u) -eq 0 ]]; then
  update-alternatives --set libblas.so.3-x86_64-linux-gnu \
    /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1 || true
fi

[[ "${FEDTUNE_SKIP_BUILD:-0}" == 1 ]] && exit 0

generator=()
if command -v ninja >/dev/null 2>&1 && [[ ! -f "$build/CMakeCache.txt" || -f "$build/build.ninja" ]]; then
  generator=(-G Ninja)
fi
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFEDTUNE_SANITIZE="${FEDTUNE_SANITIZE:-}" >"$build.configure.log" 2>&1 || {
  cat "$build.configure.log" >&2
  echo "fedtune setup: error: CMake configuration failed (log above)" >&2
  exit 1
}
rm -f "$build.configure.log"
# FEDTUNE_BUILD_TARGETS (space-separated) builds only those targets, e.g. the three programs for the demo.
targets=()
for t in ${FEDTUNE_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
echo "fedtune setup: building ${FEDTUNE_BUILD_TARGETS:-everything} in $build with $jobs jobs"
cmake --build "$build" -j "$jobs" "${targets[@]}"
echo "fedtune setup: done; programs in $build/bin: $(ls "$build/bin" | tr '\n' ' ')"
