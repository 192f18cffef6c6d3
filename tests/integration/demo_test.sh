#!/usr/bin/env bash
# The README's first command at CI scale (issue 6): deploy/demo.sh with two sites, two rounds, 32 px images, as a
# newcomer would run it (minus the set-up step, which CI has just done). Checks that it completes and prints the
# per-site table and the report paths, that it served its dashboard, that every process it started (the coordinator,
# the agents and the dashboard) has ended, that a second run reuses the PKI,
# data and open-source model, and that Ctrl-C in the middle of a run stops every process too.
# Usage: demo_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/fedtune_demo_XXXXXX")"
trap 'pkill -KILL -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
demo=("$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 2 --rounds 2 --local-epochs 1 --images 200
      --image-size 32 --work "$work/demo" --dashboard 0)
fail() { echo "FAIL: $*"; exit 1; }
# Processes whose command line names the work directory (the coordinator and agents get configs under it).
leftovers() { pgrep -f -- "$work/demo" | grep -vx "$$" || true; }

# At this scale (about 50 test cases per site, a model trained for seconds) whether the adapted model beats the
# open-source one is a coin toss that differs between CPUs (issue 10), so the test does not require the study's
# verdict: it requires the demo to state a verdict, exit 0 for "as in the study" and 3 for "not", and agree with
# the numbers of its own report. The verdict itself is tested where it holds with a wide margin: site_finetune_e2e.
rc=0
"${demo[@]}" >"$work/first.out" 2>&1 || rc=$?
[[ $rc -eq 0 || $rc -eq 3 ]] || { tail -40 "$work/first.out"; fail "demo.sh exited $rc"; }
grep -E "^site-(a|b) +[0-9]+ +0\.[0-9]+ -> 0\.[0-9]+ -> 0\.[0-9]+" "$work/first.out" || fail "no per-site summary table"
grep -q "consortium report: .*report.html" "$work/first.out" || fail "no consortium report path"
grep -q "site-a: .*report.html" "$work/first.out" || fail "no site report paths"
report="$(sed -n 's/^  consortium report: \(.*\)report.html$/\1report.json/p' "$work/first.out")"
"$root/tests/integration/check_verdict.py" "$report" "$work/first.out" "$rc" || fail "the demo's verdict does not match its report"
grep -q "^dashboard: http://127.0.0.1:[0-9]*/" "$work/first.out" || fail "the demo did not serve its dashboard"
grep -q "stopped 4 processes" "$work/first.out" || fail "the demo did not say it stopped its processes"
[[ -z "$(leftovers)" ]] || fail "processes left after the demo: $(leftovers)"
echo "ok   first run: $(grep -E '^demo: wall time' "$work/first.out")"

rc=0
"${demo[@]}" >"$work/second.out" 2>&1 || rc=$?
[[ $rc -eq 0 || $rc -eq 3 ]] || { tail -20 "$work/second.out"; fail "second demo run failed (exit $rc)"; }
grep -q "reusing .*open-source" "$work/second.out" || fail "the second run did not reuse the open-source model"
[[ -z "$(leftovers)" ]] || fail "processes left after the second run"
echo "ok   second run reused the PKI, data and open-source model: $(grep -E '^demo: wall time' "$work/second.out")"

# Ctrl-C while the run is going: the demo stops the coordinator and the agents. A terminal's Ctrl-C sends SIGINT to
# the foreground process group; a shell's `&` would start the demo with SIGINT ignored, so Python starts it in its
# own group with SIGINT at its default, as a terminal would.
rc=0
/usr/bin/python3 - "$work/interrupted.out" "${demo[@]}" --rounds 50 <<'PY' || rc=$?
import os, signal, subprocess, sys, time
out = open(sys.argv[1], "w")
demo = subprocess.Popen(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
deadline = time.time() + 120
while time.time() < deadline and "started run" not in open(sys.argv[1]).read():
    time.sleep(0.1)
os.killpg(demo.pid, signal.SIGINT)
try:
    rc = demo.wait(timeout=60)
except subprocess.TimeoutExpired:
    print("FAIL: the demo did not stop within 60 s of Ctrl-C"); os.killpg(demo.pid, signal.SIGKILL); sys.exit(100)
sys.exit(rc)
PY
[[ $rc -ne 100 ]] || fail "Ctrl-C did not stop the demo"
[[ $rc -ne 0 ]] || fail "an interrupted demo exited 0"
grep -q "^started run" "$work/interrupted.out" || fail "the interrupted demo never started its run"
for _ in $(seq 100); do [[ -z "$(leftovers)" ]] && break; sleep 0.1; done
[[ -z "$(leftovers)" ]] || fail "processes left after Ctrl-C: $(leftovers)"
grep -q "stopped 4 processes" "$work/interrupted.out" || fail "the interrupted demo did not report stopping"
echo "ok   Ctrl-C stopped every process (exit $rc)"
echo "1 passed, 0 failed"
