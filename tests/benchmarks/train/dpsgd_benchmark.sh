#!/usr/bin/env bash
# DP-SGD's training throughput against ordinary training, side by side in one run (dpsgd_benchmark): MobileNetV2 and
# DenseNet-121 at 224x224, batch 16 (DP-SGD: the expected batch size), the same thread count, after warm-up. Prints
# both rates and the slowdown (non-private / DP-SGD; the goal is <= 2.5, Opacus reports 2.6-8 on GPUs).
# Usage: dpsgd_benchmark.sh BUILD_DIR   (FEDTUNE_BENCH_THREADS, default: nproc; FEDTUNE_BENCH_SECONDS, default 10)
set -euo pipefail
build="${1:-build}"
threads="${FEDTUNE_BENCH_THREADS:-$(nproc)}"
seconds="${FEDTUNE_BENCH_SECONDS:-10}"
export FEDTUNE_BENCH_THREADS="$threads"
rate() {  # rate BENCHMARK INDEX: images/s of one benchmark
  "$build/benchmarks/dpsgd_benchmark" --benchmark_filter="$1/$2/224/16/" --benchmark_min_time="$seconds" --benchmark_min_warmup_time=1 \
      --benchmark_format=json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"][0]; print(b["images/s"])'
}
printf '%-14s %5s %5s %8s %17s %14s %9s\n' arch size batch threads "non-private img/s" "DP-SGD img/s" slowdown
for spec in "0 mobilenet_v2" "1 densenet121"; do
  set -- $spec
  index=$1 arch=$2
  plain=$(rate BM_NonPrivateStep "$index")
  dp=$(rate BM_DpSgdStep "$index")
  slowdown=$(/usr/bin/python3 -c "print(f'{$plain/$dp:.2f}x')")
  printf '%-14s %5d %5d %8d %17.2f %14.2f %9s\n' "$arch" 224 16 "$threads" "$plain" "$dp" "$slowdown"
done
