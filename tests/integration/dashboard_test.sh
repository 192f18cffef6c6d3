#!/usr/bin/env bash
# The web dashboard in a real browser (issue 15): a live tiny federation (the real coordinator and two real site
# agents on 127.0.0.1 over mTLS, tiny models, 32 px images, a run of 4 rounds), `fedtune dashboard` on a free
# loopback port, and Debian's headless Chromium driven by chromedriver through the W3C WebDriver protocol
# (dashboard_browser.py: python3 stdlib only). Checks:
#   - the page, opened once before the run starts, lists both sites, then shows a round and a later round without
#     being reloaded (server-sent events), and finally the completed run, its loss chart and its report link;
#   - screenshots kept as test artifacts: ARTIFACT_DIR/dashboard-live.png (mid-run) and ARTIFACT_DIR/dashboard.png;
#   - without JavaScript (a plain HTTP GET), / is a usable snapshot: the round, both sites, the run's report link;
#   - /api/state is the same snapshot as JSON; /runs/RUN/report serves the consortium report once the run is over;
#   - the dashboard refuses writes and foreign Host headers, and stops cleanly on SIGTERM.
# Usage: dashboard_test.sh REPO_ROOT BIN_DIR ARTIFACT_DIR
set -euo pipefail
root="$1" bin="$2" artifacts="$3"
source "$root/tests/integration/lib.sh"
work_dir dashboard
driver_pid=""
# chromedriver runs in its own process group (setsid) with the Chromium it starts: the whole group goes at exit.
stop_browser() {
  if [[ -n "$driver_pid" ]]; then
    kill -TERM -- "-$driver_pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 -- "-$driver_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$driver_pid" 2>/dev/null || true
  fi
  # A Chromium process that left the group still names this test's own profile directory.
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "--user-data-dir=$work/chromium-profile"; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
}
trap 'stop_browser; fedtune_test_cleanup' EXIT
fail() { echo "FAIL: $*"; tail -n 15 "$work"/logs/*.log 2>/dev/null; exit 1; }
for tool in /usr/bin/chromium /usr/bin/chromedriver /usr/bin/python3; do
  [[ -x "$tool" ]] || fail "$tool is missing (Debian packages chromium, chromium-driver, python3)"
done
mkdir -p "$artifacts"
rm -f "$artifacts/dashboard.png" "$artifacts/dashboard-live.png"

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 2 --images 120 --image-size 32 --pretrain-epochs 2 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
mkdir -p logs
start_coordinator d

for id in site-a site-b; do
  cat > "$id/d.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "d-work"
heartbeat_seconds: 1
exit_after_runs: 1
finetune {
  manifest: "$(ls -d "$id"/data-* | head -1 | cut -d/ -f2)/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.15 test: 0.25 seed: 1 }
}
CFG
  FEDTUNE_LOG_LEVEL=0 "$bin/fedtune-site" run --config "$id/d.textproto" >"logs/$id.log" 2>&1 &
  pids+=($!)
done
wait_approved 2

# ---- The dashboard, on a free loopback port, polling every second.
"$bin/fedtune" dashboard --listen 127.0.0.1:0 --port-file dashboard.port --interval 0.5 \
  >logs/dashboard.out 2>logs/dashboard.log &
dashboard_pid=$!
pids+=($dashboard_pid)
for _ in $(seq 300); do [[ -s dashboard.port ]] && break; sleep 0.1; done
[[ -s dashboard.port ]] || fail "the dashboard did not start"
url="http://127.0.0.1:$(cat dashboard.port)/"
grep -q "^dashboard: $url" logs/dashboard.out || fail "the dashboard did not print its URL $url: $(cat logs/dashboard.out)"
get() { /usr/bin/python3 "$root/tests/integration/http_get.py" "$@"; }
for _ in $(seq 100); do get "${url}api/state" 2>/dev/null | grep -q '"site-b"' && break; sleep 0.1; done
get "${url}api/state" | grep -q '"site-b"' || fail "the dashboard's state never listed site-b"

# ---- The browser: chromedriver on a free port, in its own process group.
driver_port="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
setsid /usr/bin/chromedriver --port="$driver_port" >logs/chromedriver.log 2>&1 &
driver_pid=$!
for _ in $(seq 100); do get "http://127.0.0.1:$driver_port/status" >/dev/null 2>&1 && break; sleep 0.1; done
get "http://127.0.0.1:$driver_port/status" >/dev/null || fail "chromedriver did not start"
/usr/bin/python3 "$root/tests/integration/dashboard_browser.py" "http://127.0.0.1:$driver_port" "$url" "$work" \
  "$artifacts" >browser.out 2>&1 &
browser_pid=$!
pids+=($browser_pid)
# dashboard_browser.py may take 120 s (session) + 30 s + 30 s before it writes page-loaded: wait longer than that.
for _ in $(seq 2100); do [[ -f page-loaded ]] && break; kill -0 "$browser_pid" 2>/dev/null || break; sleep 0.1; done
[[ -f page-loaded ]] || { cat browser.out; fail "the browser did not load the dashboard"; }

# ---- The run starts only now, with the page already open.
cat > run.textproto <<CFG
name: "dashboard <test>" rounds: 4 min_sites: 2 round_deadline_seconds: 120 local_epochs: 1
learning_rate: 0.05 batch_size: 16 aggregation: "fedavg" compression: "fp32" final_evaluation: false
sites: "site-a" sites: "site-b"
CFG
run_id="$("$bin/fedtune" run start --config run.textproto)"
echo "started run $run_id with the page open"
browser_rc=0
wait "$browser_pid" || browser_rc=$?
cat browser.out
[[ $browser_rc -eq 0 ]] || fail "the browser checks failed (exit $browser_rc)"
[[ -s "$artifacts/dashboard.png" ]] || fail "no screenshot at $artifacts/dashboard.png"
echo "screenshot: $artifacts/dashboard.png (mid-run: $artifacts/dashboard-live.png)"

# ---- Without JavaScript: the page itself is the snapshot.
page="$(get "$url")"
grep -q "id=\"current-round\" data-round=\"4\" data-rounds=\"4\"" <<<"$page" || fail "the static page does not show round 4 of 4"
grep -q "<tr data-site=\"site-a\">" <<<"$page" || fail "the static page does not list site-a"
grep -q "<tr data-site=\"site-b\">" <<<"$page" || fail "the static page does not list site-b"
grep -q "href=\"/runs/$run_id/report\"" <<<"$page" || fail "the static page has no link to the report of $run_id"
grep -q "dashboard &lt;test&gt;" <<<"$page" || fail "the run's name is not shown escaped"
grep -q "<test>" <<<"$page" && fail "the run's name reached the page unescaped"
grep -q "<svg id=\"loss-chart\" data-points=\"4\"" <<<"$page" || fail "the static page's loss chart lacks the 4 rounds"
echo "ok   without JavaScript, / shows round 4 of 4, both sites, the loss chart and the report link"
get "${url}api/state" | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)
run = s["run"]
assert run["run_id"] == sys.argv[1] and run["state"] == "completed", run
assert run["rounds_closed"] == 4 and len(run["losses"]) == 4, run
assert sorted(x["site_id"] for x in s["sites"]) == ["site-a", "site-b"], s["sites"]
assert s["runs"][0]["run_id"] == sys.argv[1] and s["runs"][0]["report_url"] == "/runs/%s/report" % sys.argv[1]
assert s["errors"] == [], s["errors"]
print("ok   /api/state: run %s completed, 4 rounds with losses, both sites, the history" % run["run_id"])
' "$run_id" || fail "/api/state is not the expected snapshot"
report="$(get "${url}runs/$run_id/report")"
grep -q "<title>fedtune consortium report: run $run_id</title>" <<<"$report" || fail "/runs/$run_id/report is not the report"
grep -q "site-b" <<<"$report" || fail "the report does not list site-b"
echo "ok   /runs/$run_id/report serves the consortium report"
[[ "$(get --status "${url}runs/run-does-not-exist/report")" == 404 ]] || fail "an unknown run's report is not 404"
[[ "$(get --status --method POST "$url")" == 405 ]] || fail "a POST is not refused with 405"
[[ "$(get --status --host evil.example "$url")" == 403 ]] || fail "a foreign Host header is not refused"
echo "ok   unknown run 404, POST 405, foreign Host 403"

# ---- A clean stop.
kill -TERM "$dashboard_pid"
for _ in $(seq 300); do kill -0 "$dashboard_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$dashboard_pid" 2>/dev/null && fail "the dashboard did not stop within 30 s of SIGTERM"
rc=0
wait "$dashboard_pid" || rc=$?
[[ $rc -eq 0 ]] || fail "the dashboard exited $rc on SIGTERM"
grep -q "dashboard stopped" logs/dashboard.out || fail "the dashboard did not say it stopped"
echo "ok   the dashboard stops cleanly on SIGTERM"
echo "1 passed, 0 failed"
