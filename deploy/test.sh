#!/usr/bin/env bash
# Set-up, build, and every test through ctest; then the training tests (ctest label "learning") once more with
# LibTorch's CPU kernels limited to SSE4.1 (ONEDNN_MAX_CPU_ISA=SSE41), so that a test that holds only on this CPU's
# rounding fails here rather than on another machine. Exit status: 0 only when both passed.
#
# Extra arguments go to the first ctest run (e.g. `-R trainer`); with arguments the SSE4.1 rerun is skipped.
# Environment:
#   FEDTUNE_SANITIZE=address|thread  an ASan+UBSan or TSan build in build-asan/ or build-tsan/ (or
#                                    FEDTUNE_BUILD_DIR), and tests run under it (no SSE4.1 rerun). address: the whole
#                                    suite. thread: the concurrent code, i.e. the tests labelled `threads` (coordinator,
#                                    agent, net, PKI verifier, operator CLI) and FederatedAgentTest; only their
#                                    binaries are built. Not for CI: it takes far longer. Suppressions and the
#                                    absl::Mutex annotations for TSan: tests/sanitizers/.
#   FEDTUNE_BUILD_DIR, FEDTUNE_JOBS  as in deploy/setup.sh; FEDTUNE_TEST_JOBS  parallel tests (default: cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sanitize="${FEDTUNE_SANITIZE:-}"
case "$sanitize" in
  "") build="${FEDTUNE_BUILD_DIR:-$root/build}" ;;
  address)
    build="${FEDTUNE_BUILD_DIR:-$root/build-asan}"
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0}"
    ;;
  thread)
    build="${FEDTUNE_BUILD_DIR:-$root/build-tsan}"
    export TSAN_OPTIONS="${TSAN_OPTIONS:-suppressions=$root/tests/sanitizers/tsan.supp:halt_on_error=0:second_deadlock_stack=1:history_size=7}"
    export FEDTUNE_BUILD_TARGETS="${FEDTUNE_BUILD_TARGETS:-coordinator_config_test coordinator_state_store_test \
      coordinator_site_call_limiter_test coordinator_round_manager_test coordinator_server_test coordinator_client_test \
      federated_agent_test net_tls_test net_grpc_status_test pki_grpc_mtls_test pki_verifier_test admin_commands_test}"
    ;;
  *) echo "test.sh: FEDTUNE_SANITIZE must be address or thread, not '$sanitize'" >&2; exit 2 ;;
esac
export FEDTUNE_BUILD_DIR="$build"
"$root/deploy/setup.sh"
jobs="${FEDTUNE_TEST_JOBS:-$(nproc)}"
cd "$build"
rc=0
if [[ "$sanitize" == thread && $# -eq 0 ]]; then
  # A TSan report makes the process exit 66, so a test with a data race fails even when its assertions pass.
  ctest --output-on-failure --timeout 900 -j "$jobs" -L threads || rc=$?
  ctest --output-on-failure --timeout 900 -j "$jobs" -R '^FederatedAgentTest\.' || rc=$?
  exit $rc
fi
ctest --output-on-failure --timeout 900 -j "$jobs" "$@" || rc=$?
if [[ $# -eq 0 && -z "$sanitize" ]]; then
  echo
  echo "== training tests again with ONEDNN_MAX_CPU_ISA=SSE41 (they must hold on any x86-64 CPU)"
  ONEDNN_MAX_CPU_ISA=SSE41 ctest --output-on-failure --timeout 900 -j "$jobs" -L learning || rc=$?
fi
exit $rc
