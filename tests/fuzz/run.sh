#!/usr/bin/env bash
# Fuzzes every harness in tests/fuzz for SECONDS each with libFuzzer, ASan and UBSan (clang), and
# -rss_limit_mb=2048: an input that makes a harness use more than 2 GiB is a finding, like a crash.
# Usage: tests/fuzz/run.sh SECONDS [NAME...]    (default: every harness; NAME as in corpus/NAME)
# Environment:
#   FEDTUNE_FUZZ_BUILD_DIR  build folder (default build-fuzz beside this repository's CMakeLists.txt)
#   FEDTUNE_FUZZ_PARALLEL   harnesses fuzzed at the same time (default: number of cores)
#   FEDTUNE_FUZZ_MERGE=1    merge new coverage-increasing inputs back into corpus/NAME (minimized)
# Needs clang-14, libfuzzer-14-dev and libclang-rt-14-dev (installed here when missing, as deploy/setup.sh does).
# Findings (crash-*, leak-*, oom-*, timeout-* files) land in BUILD/findings/NAME/; the script prints one line per
# harness (runs, coverage, findings) and exits 1 if any harness has a finding.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
seconds="${1:-}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: tests/fuzz/run.sh SECONDS [NAME...]" >&2; exit 2; }
shift
build="${FEDTUNE_FUZZ_BUILD_DIR:-$root/build-fuzz}"
parallel="${FEDTUNE_FUZZ_PARALLEL:-$(nproc)}"

FEDTUNE_SKIP_BUILD=1 "$root/deploy/setup.sh" >/dev/null  # The Debian packages the project builds against.
missing=()
for p in clang-14 libfuzzer-14-dev libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "fuzz: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  for d in "$root"/tests/fuzz/corpus/*/; do names+=("$(basename "$d")"); done
fi
targets=()
for n in "${names[@]}"; do targets+=(--target "fuzz_$n"); done

generator=()
command -v ninja >/dev/null 2>&1 && [[ ! -f "$build/CMakeCache.txt" || -f "$build/build.ninja" ]] && generator=(-G Ninja)
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFEDTUNE_FUZZ=ON >"$build.configure.log" 2>&1 || { cat "$build.configure.log" >&2; exit 1; }
echo "fuzz: building ${#names[@]} harnesses in $build"
cmake --build "$build" -j "$(nproc)" "${targets[@]}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
run_one() {
  local n="$1" work="$build/work/$1" findings="$build/findings/$1"
  mkdir -p "$work" "$findings"
  local rc=0
  # The checked-in corpus is read-only input; new inputs go to the work folder.
  "$build/fuzz/fuzz_$n" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$findings/" "$work" "$root/tests/fuzz/corpus/$n" >"$build/work/$n.log" 2>&1 || rc=$?
  local runs cov found
  runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$build/work/$n.log" | grep -oE '[0-9]+$' || echo '?')"
  cov="$(grep -oE 'cov: [0-9]+' "$build/work/$n.log" | tail -1 | grep -oE '[0-9]+' || echo '?')"
  found="$(find "$findings" -type f | wc -l)"
  printf 'fuzz %-16s %4ss  runs %-10s coverage %-6s findings %s%s\n' "$n" "$seconds" "$runs" "$cov" "$found" \
    "$([[ $rc -ne 0 ]] && echo "  (exit $rc; log $build/work/$n.log)")"
  if [[ "${FEDTUNE_FUZZ_MERGE:-0}" == 1 && $found -eq 0 ]]; then
    "$build/fuzz/fuzz_$n" -merge=1 -rss_limit_mb=2048 "$root/tests/fuzz/corpus/$n" "$work" >/dev/null 2>&1 || true
  fi
  [[ $rc -eq 0 && $found -eq 0 ]]
}

failed=0
pids=()
for n in "${names[@]}"; do
  run_one "$n" &
  pids+=($!)
  if [[ ${#pids[@]} -ge $parallel ]]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[[ $failed -eq 0 ]] && echo "fuzz: no findings" || echo "fuzz: FINDINGS: see $build/findings/"
exit $failed
