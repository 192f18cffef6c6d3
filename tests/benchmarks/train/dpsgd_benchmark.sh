#!/usr/bin/env bash
# DP-SGD's training throughput against ordinary training, side by side in one run of dpsgd_benchmark per
# architecture: MobileNetV2 and DenseNet-121 at 224x224, batch 16 (DP-SGD: the expected batch size), the same thread
# count, after a warm-up iteration. Prints images/s of wall time for ordinary training, DP-SGD and per-image
# forward/backward alone (micro-batching without clipping or noise), and the slowdowns (ordinary / DP-SGD), of wall
# time and of process CPU time (less sensitive to other load on the machine). The goal is <= 2.5x; Opacus
# reports 2.6-8x on GPUs.
# Usage: dpsgd_benchmark.sh BUILD_DIR   (FEDTUNE_BENCH_THREADS, default: nproc; FEDTUNE_BENCH_SECONDS, default 1)
set -euo pipefail
build="${1:-build}"
threads="${FEDTUNE_BENCH_THREADS:-$(nproc)}"
seconds="${FEDTUNE_BENCH_SECONDS:-1}"
export FEDTUNE_BENCH_THREADS="$threads"
printf '%-13s %4s %5s %7s %13s %13s %15s %14s %14s\n' arch size batch threads "ordinary im/s" "DP-SGD im/s" \
  "per-image im/s" "slowdown wall" "slowdown cpu"
for spec in "0 mobilenet_v2" "1 densenet121"; do
  set -- $spec
  index=$1 arch=$2
  "$build/benchmarks/dpsgd_benchmark" --benchmark_filter="/$index/224/16/" --benchmark_min_time="$seconds" \
      --benchmark_min_warmup_time=1 --benchmark_format=json 2>/dev/null |
    /usr/bin/python3 -c '
import json, sys
arch, threads = sys.argv[1], int(sys.argv[2])
b = {x["name"].split("/")[0]: x for x in json.load(sys.stdin)["benchmarks"]}
plain, dp, only = b["BM_NonPrivateStep"], b["BM_DpSgdStep"], b["BM_PerImageBackwardOnly"]
print("%-13s %4d %5d %7d %13.3f %13.3f %15.3f %13.2fx %13.2fx" % (
    arch, 224, 16, threads, plain["images/s"], dp["images/s"], only["images/s"],
    plain["images/s"] / dp["images/s"], plain["images/cpu_s"] / dp["images/cpu_s"]))' "$arch" "$threads"
done
