# Sourced by the integration tests that start their own processes: a fresh work directory and the clean-up of every
# process the test records in `pids`.
#   work_dir NAME   sets `work` to a new directory ${TMPDIR:-/tmp}/fedtune_NAME_XXXXXX and `pids` to (); on exit the
#                   recorded processes are killed and `work` removed (kept when KEEP is set, for debugging).

work_dir() {
  work="$(mktemp -d "${TMPDIR:-/tmp}/fedtune_$1_XXXXXX")"
  pids=()
  trap fedtune_test_cleanup EXIT
}

fedtune_test_cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] || rm -rf "$work"
}
