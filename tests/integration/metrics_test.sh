#!/usr/bin/env bash
# Prometheus metrics with real processes (issue 15): the real coordinator with its metrics endpoint on 127.0.0.1:0
# (metrics_port_file), two real site agents (their endpoints too, when the site agent has one), one run of 2 rounds on
# tiny synthetic sites. Scrapes the coordinator while the run goes and after it: `promtool check metrics` accepts every
# exposition, and the key series hold plausible values (rounds closed, GetTask calls OK, bytes both ways per site,
# accepted uploads, site states, runs by state, process memory). Then `promtool check config` on
# deploy/monitoring/prometheus.yml, and the Grafana dashboard's check against the union of the scraped metric names
# (tests/tools/grafana_dashboard_check.py: every metric it queries exists in a running program).
# Usage: metrics_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir metrics
fail() { echo "FAIL: $*"; tail -n 15 "$work"/logs/*.log; exit 1; }
command -v promtool >/dev/null || { echo "FAIL: promtool not found (Debian's prometheus package)"; exit 1; }

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 2 --images 60 --image-size 32 --pretrain-epochs 1 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
mkdir -p logs scrapes

# The coordinator as lib.sh's start_coordinator starts it, with the metrics endpoint.
model="$(ls models/open-source-*.ckpt | head -1)"
cat > coordinator/m.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "../ca"
state_dir: "m-state"
initial_model: "../$model"
task_wait_seconds: 2
heartbeat_timeout_seconds: 30
auto_approve: true
metrics_listen_address: "127.0.0.1:0"
metrics_port_file: "metrics.port"
CFG
db="$PWD/coordinator/m-state/coordinator.db"
"$bin/fedtune-coordinator" --config coordinator/m.textproto >logs/coordinator.log 2>&1 &
pids+=($!)
for _ in $(seq 300); do [[ -s coordinator/port && -s coordinator/metrics.port ]] && break; sleep 0.1; done
[[ -s coordinator/port ]] || fail "the coordinator did not start"
[[ -s coordinator/metrics.port ]] || fail "the coordinator wrote no metrics_port_file"
port="$(cat coordinator/port)"
mport="$(cat coordinator/metrics.port)"
export FEDTUNE_COORDINATOR="localhost:$port" FEDTUNE_CA="$PWD/ca/ca.pem"
export FEDTUNE_CERT="$PWD/operator/operator.pem" FEDTUNE_KEY="$PWD/operator/operator.key"
echo "coordinator on port $port, metrics on port $mport"

n=0
# scrape PORT NAME: GET /metrics into scrapes/NAME-<n>.txt (complete or absent) and `promtool check metrics` it (which
# reads stdin); a rejected exposition leaves scrapes/NAME-<n>.rejected with promtool's output. Prints the file's path.
scrape() {
  n=$((n + 1))
  local out="scrapes/$2-$n.txt"
  /usr/bin/python3 - "$1" "$out" <<'PY' || { echo "FAIL: GET http://127.0.0.1:$1/metrics failed" >&2; return 1; }
import os, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10) as r:
    assert r.status == 200, r.status
    open(sys.argv[2] + ".part", "wb").write(r.read())
os.rename(sys.argv[2] + ".part", sys.argv[2])
PY
  if ! promtool check metrics <"$out" >"$out.promtool" 2>&1; then
    mv "$out.promtool" "${out%.txt}.rejected"
    cat "${out%.txt}.rejected" >&2
    echo "FAIL: promtool check metrics rejects $out" >&2
    return 1
  fi
  echo "$out"
}
# value FILE SERIES: the sample of SERIES (its name and labels as written, e.g. 'x{a="b"}'; labels in any order);
# empty when absent.
value() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import re, sys
def parse(series):
    m = re.fullmatch(r'([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?', series)
    return m.group(1), frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
want = parse(sys.argv[2])
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    series, _, v = line.strip().rpartition(" ")
    if parse(series) == want:
        print(v)
        break
PY
}
# at_least FILE SERIES MIN WHAT
at_least() {
  local v
  v="$(value "$1" "$2")"
  [[ -n "$v" ]] || fail "$4: $2 is absent from $1"
  /usr/bin/python3 -c "import sys; sys.exit(0 if float('$v') >= float('$3') else 1)" || fail "$4: $2 is $v, below $3"
  echo "ok   $4: $2 = $v"
}
# equals FILE SERIES VALUE WHAT
equals() {
  local v
  v="$(value "$1" "$2")"
  /usr/bin/python3 -c "import sys; sys.exit(0 if '$v' != '' and float('$v') == float('$3') else 1)" ||
    fail "$4: $2 is '${v}', not $3"
  echo "ok   $4: $2 = $v"
}

first="$(scrape "$mport" coordinator)" || fail "the first scrape"
equals "$first" 'fedtune_coordinator_runs_started_total' 0 "before any run"
equals "$first" 'fedtune_coordinator_runs{state="running"}' 0 "before any run"
equals "$first" 'fedtune_coordinator_current_round' 0 "before any run"
at_least "$first" 'fedtune_process_resident_memory_bytes' 1000000 "the coordinator's memory"

for id in site-a site-b; do
  rm -f "$work/$id/metrics.port"
  cat > "$id/m.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "m-work"
heartbeat_seconds: 1
metrics_listen_address: "127.0.0.1:0"
metrics_port_file: "$work/$id/metrics.port"
finetune {
  manifest: "$(ls -d "$id"/data-* | head -1 | cut -d/ -f2)/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.15 test: 0.25 seed: 1 }
}
CFG
  "$bin/fedtune-site" run --config "$id/m.textproto" >"logs/$id.log" 2>&1 &
  pids+=($!)
done
wait_approved 2

cat > run.textproto <<CFG
name: "metrics" rounds: 2 min_sites: 2 round_deadline_seconds: 300 local_epochs: 1 learning_rate: 0.05
batch_size: 16 aggregation: "fedavg" compression: "fp32" final_evaluation: false
sites: "site-a" sites: "site-b"
CFG
run_id="$("$bin/fedtune" run start --config run.textproto)"
echo "started run $run_id"
# During the run: scraped every half second until it ends (each one checked by promtool); what each saw is kept.
during="$(scrape "$mport" coordinator)" || fail "a scrape during the run"
equals "$during" 'fedtune_coordinator_runs_started_total' 1 "run started"
(
  while true; do scrape "$mport" coordinator-loop >/dev/null || true; sleep 0.5; done
) &
scraper=$!
pids+=($scraper)
# The site agents' endpoints (built by the site agent's own change): an agent writes its port file at start-up,
# before its Hello, so both are there by now when the agents have endpoints (a short grace all the same).
site_ports=()
for _ in $(seq 30); do [[ -s site-a/metrics.port && -s site-b/metrics.port ]] && break; sleep 0.1; done
for id in site-a site-b; do
  [[ -s "$id/metrics.port" ]] && site_ports+=("$(cat "$id/metrics.port")")
done
if ((${#site_ports[@]} == 2)); then
  for sp in "${site_ports[@]}"; do scrape "$sp" site >/dev/null || fail "a site agent's scrape during the run"; done
  echo "ok   both site agents serve metrics during the run (promtool accepts them)"
fi

"$bin/fedtune" run status --run "$run_id" --watch --interval 1 >watch.out 2>&1 || { tail -20 watch.out; fail "run $run_id did not complete"; }
kill "$scraper" 2>/dev/null || true
wait "$scraper" 2>/dev/null || true
[[ "$(sql "SELECT state FROM runs WHERE run_id = '$run_id'")" == completed ]] || fail "run $run_id is not completed"
# Every scrape the loop took passed promtool.
taken=$(ls scrapes/coordinator-*.txt | wc -l)
if ls scrapes/*.rejected >/dev/null 2>&1; then
  head -5 scrapes/*.rejected
  fail "promtool check metrics rejected $(ls scrapes/*.rejected | wc -l) of $taken scrape(s)"
fi
echo "ok   $taken coordinator scrapes during and after the run, promtool check metrics accepted each"
# The rounds were seen open while the run went (at least one scrape before the last round closed).
grep -l '^fedtune_coordinator_round_open 1' scrapes/coordinator-*.txt >/dev/null ||
  fail "no scrape during the run saw fedtune_coordinator_round_open 1"
echo "ok   a scrape during the run saw a round open"

last="$(scrape "$mport" coordinator)" || fail "the scrape after the run"
rounds="$(sql "SELECT COUNT(*) FROM rounds WHERE run_id = '$run_id' AND state = 'closed'")"
equals "$last" 'fedtune_coordinator_rounds_total{state="closed"}' "$rounds" "rounds closed (the database has $rounds)"
at_least "$last" 'fedtune_coordinator_rounds_total{state="closed"}' 1 "rounds closed"
equals "$last" 'fedtune_coordinator_runs_started_total' 1 "runs started"
equals "$last" 'fedtune_coordinator_runs{state="completed"}' 1 "runs completed"
equals "$last" 'fedtune_coordinator_runs{state="running"}' 0 "runs running after the run"
equals "$last" 'fedtune_coordinator_current_round' 0 "no active run"
equals "$last" 'fedtune_coordinator_round_open' 0 "no open round"
at_least "$last" 'fedtune_coordinator_aggregation_seconds_count' "$rounds" "aggregations timed"
at_least "$last" 'fedtune_coordinator_rpcs_total{method="SiteService/GetTask",code="OK"}' 2 "GetTask calls"
at_least "$last" 'fedtune_coordinator_rpcs_total{method="SiteService/Hello",code="OK"}' 2 "Hello calls"
at_least "$last" 'fedtune_coordinator_rpcs_total{method="SiteService/UploadUpdate",code="OK"}' 4 "UploadUpdate calls"
at_least "$last" 'fedtune_coordinator_rpcs_total{method="AdminService/StartRun",code="OK"}' 1 "StartRun calls"
at_least "$last" 'fedtune_coordinator_rpc_duration_seconds_count{method="SiteService/GetTask"}' 2 "GetTask durations"
at_least "$last" 'fedtune_coordinator_spool_bytes' 0 "spool"
for id in site-a site-b; do
  down="$(sql "SELECT SUM(bytes_down) FROM transfers WHERE site_id = '$id'")"
  at_least "$last" "fedtune_coordinator_site_sent_bytes_total{site=\"$id\"}" 1 "$id's downloads"
  equals "$last" "fedtune_coordinator_site_sent_bytes_total{site=\"$id\"}" "$down" "$id's downloads (the database: $down)"
  at_least "$last" "fedtune_coordinator_site_received_bytes_total{site=\"$id\"}" 1 "$id's uploads"
  equals "$last" "fedtune_coordinator_site_failures_total{site=\"$id\",stage=\"training\"}" 0 "$id's failure reports"
  equals "$last" "fedtune_coordinator_uploads_total{site=\"$id\",result=\"refused\"}" 0 "$id's refused updates"
  equals "$last" "fedtune_coordinator_uploads_total{site=\"$id\",result=\"accepted\"}" \
    "$(sql "SELECT COUNT(*) FROM updates WHERE site_id = '$id' AND status = 'accepted'")" "$id's accepted updates"
  /usr/bin/python3 - "$last" "$id" <<'PY' || fail "$id's state or last seen"
import re, sys, time
text, site = open(sys.argv[1]).read(), sys.argv[2]
states = re.findall(r'^fedtune_coordinator_site_state\{site="%s",state="(\w+)"\} (\S+)$' % re.escape(site), text, re.M)
on = [s for s, v in states if float(v) == 1]
seen = re.search(r'^fedtune_coordinator_site_last_seen_timestamp_seconds\{site="%s"\} (\S+)$' % re.escape(site), text, re.M)
ok = len(states) == 9 and len(on) == 1 and on[0] not in ("lost", "failed") and seen and abs(time.time() - float(seen.group(1))) < 120
print(("ok   " if ok else "FAIL ") + f"{site}: state {on} of {len(states)} series, last seen {seen and seen.group(1)}")
sys.exit(0 if ok else 1)
PY
done

(cd "$root/deploy/monitoring" && promtool check config prometheus.yml) >promtool-config.out 2>&1 ||
  { cat promtool-config.out; fail "promtool check config deploy/monitoring/prometheus.yml"; }
echo "ok   promtool check config deploy/monitoring/prometheus.yml"

# The Grafana dashboard against what the programs served. Names a site agent exports only after some event
# (differential privacy, a task failure) pass when their literal is in the sources.
dash=("$root/tests/tools/grafana_dashboard_check.py" "$root/deploy/monitoring/grafana-dashboard.json"
  --source-root "$root" --conditional fedtune_site_privacy_epsilon_spent --conditional fedtune_site_privacy_epsilon_budget
  --conditional fedtune_site_last_error --conditional fedtune_site_errors_total)
for f in scrapes/*.txt; do dash+=(--scrape "$f"); done
if ((${#site_ports[@]} == 2)); then
  for sp in "${site_ports[@]}"; do scrape "$sp" site-after >/dev/null || fail "a site agent's scrape after the run"; done
  echo "ok   both site agents serve metrics after the run (promtool accepts them)"
  for f in scrapes/site-after-*.txt; do dash+=(--scrape "$f"); done
else
  fail "the site agents' metrics endpoints: ${#site_ports[@]} of 2 site agents wrote their metrics_port_file"
fi
/usr/bin/python3 "${dash[@]}" || fail "the Grafana dashboard queries metrics that no program exported"
echo "ok   every metric the Grafana dashboard queries was scraped from the programs"
echo "1 passed, 0 failed"
