#!/usr/bin/env bash
# Training throughput of fedtune's C++ training step against PyTorch eager (Debian's python3-torch), side by side:
# MobileNetV2 and DenseNet-121 at 224x224, batch 8, the same thread count, after warm-up. Prints both and the ratio.
# Usage: train_vs_pytorch.sh BUILD_DIR   (FEDTUNE_BENCH_THREADS, default: nproc; FEDTUNE_BENCH_SECONDS, default 20)
set -euo pipefail
build="${1:-build}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
threads="${FEDTUNE_BENCH_THREADS:-$(nproc)}"
seconds="${FEDTUNE_BENCH_SECONDS:-20}"
export FEDTUNE_BENCH_THREADS="$threads"
printf '%-14s %5s %5s %8s %14s %14s %7s\n' arch size batch threads "fedtune img/s" "pytorch img/s" ratio
for spec in "0 mobilenet_v2" "1 densenet121"; do
  set -- $spec
  index=$1 arch=$2
  cpp=$("$build/benchmarks/model_benchmark" --benchmark_filter="BM_TrainStep/$index/224/8/" \
          --benchmark_min_time="$seconds" --benchmark_format=json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"][0]; print(b["images/s"])')
  py=$(/usr/bin/python3 "$here/train_step_pytorch.py" "$arch" 224 8 "$threads" "$seconds" | sed 's/images_per_s=//')
  ratio=$(/usr/bin/python3 -c "print(f'{$cpp/$py:.2f}')")
  printf '%-14s %5d %5d %8d %14.2f %14.2f %7s\n' "$arch" 224 8 "$threads" "$cpp" "$py" "$ratio"
done
