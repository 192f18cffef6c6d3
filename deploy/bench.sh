#!/usr/bin/env bash
# Runs the benchmarks in tests/benchmarks/ (never part of ctest or CI: tests never assert timings).
# Usage: deploy/bench.sh [FILTER]   (FILTER: a substring of benchmark binary names, e.g. "stats")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${FEDTUNE_BUILD_DIR:-$root/build}"
"$root/deploy/setup.sh" >/dev/null
filter="${1:-}"
shopt -s nullglob
for bench in "$build"/benchmarks/*_benchmark; do
  [[ -z "$filter" || "$bench" == *"$filter"* ]] || continue
  echo "== $(basename "$bench")"
  "$bench" --benchmark_counters_tabular=true
done
for script in "$root"/tests/benchmarks/*/*.sh; do
  [[ -z "$filter" || "$script" == *"$filter"* ]] || continue
  echo "== $(basename "$script")"
  bash "$script" "$build"
done
# data_index_benchmark writes its 10,000 synthetic DICOM files (about 30 MB) once into
# ${TMPDIR:-/tmp}/fedtune_data_index_benchmark and reuses them; delete that folder to start afresh.
# JPEG 2000 decode on one core for every decoder (GDCM asks OpenJPEG for threads of its own; fedtune decodes on the
# calling thread): jpeg2000_benchmark again, pinned to CPU 0.
jpeg2000="$build/benchmarks/jpeg2000_benchmark"
if [[ -x "$jpeg2000" && ( -z "$filter" || "$jpeg2000" == *"$filter"* ) ]] && command -v taskset >/dev/null; then
  echo "== jpeg2000_benchmark, one core (taskset -c 0)"
  taskset -c 0 "$jpeg2000" --benchmark_counters_tabular=true
fi
