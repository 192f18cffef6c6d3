#!/usr/bin/env bash
# Runs the training tests (ctest label "learning") under each CPU instruction set LibTorch's oneDNN kernels may
# use: SSE41, AVX, AVX2 and the machine's default (AVX-512 where the CPU has it). A learning test must pass under
# every one: different kernels round differently, and a test that passes on one CPU only asserts luck.
# Usage: tests/robustness/isa_matrix.sh [BUILD_DIR] [ctest args...]   (BUILD_DIR default: build; built already)
# Prints one line per ISA and a closing "N passed, N failed" line; exit status 1 when any ISA failed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
shift || true
[[ -f "$build/CTestTestfile.cmake" ]] || { echo "isa_matrix: $build is not a build folder (run deploy/setup.sh)" >&2; exit 2; }
cd "$build"
passed=0 failed=0
summary=()
for isa in SSE41 AVX AVX2 default; do
  log="$build/isa-matrix-$isa.log"
  start=$(date +%s)
  if [[ $isa == default ]]; then
    ctest --output-on-failure --timeout 900 -j "${FEDTUNE_TEST_JOBS:-$(nproc)}" -L learning "$@" >"$log" 2>&1
  else
    ONEDNN_MAX_CPU_ISA=$isa ctest --output-on-failure --timeout 900 -j "${FEDTUNE_TEST_JOBS:-$(nproc)}" -L learning \
      "$@" >"$log" 2>&1
  fi
  rc=$?
  cp Testing/Temporary/LastTest.log "$build/isa-matrix-$isa.full.log" 2>/dev/null || true
  line="$(grep -E 'tests passed|tests failed' "$log" | tail -1)"
  summary+=("$(printf '%-8s %s (%ss)%s' "$isa" "${line:-no ctest summary}" $(( $(date +%s) - start )) \
    "$([[ $rc -ne 0 ]] && echo "  FAILED: $(grep -E '^ *[0-9]+ - ' "$log" | sed 's/^ *[0-9]* - //' | tr '\n' ' ')")")")
  if [[ $rc -eq 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  echo "${summary[-1]}"
done
# What the learning tests measured under each ISA (the study verdicts and AUCs they print), for the record.
for isa in SSE41 AVX AVX2 default; do
  grep -hE "^(site-[a-z0-9]+ +[0-9]+ +0\.[0-9]+ ->|As in the study|NOT as in the study|mean AUC open-source)" \
    "$build/isa-matrix-$isa.full.log" 2>/dev/null | sed "s/^/  $isa: /" || true
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
