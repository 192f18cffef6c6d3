#!/usr/bin/env bash
# Fault tolerance with real processes (issue 5): a coordinator and three site agents on 127.0.0.1.
#   1. The coordinator is killed (SIGKILL) in round 1 after two sites' updates were accepted, and restarted on the
#      same port: the round closes with those two updates plus the third site's (no accepted update lost).
#   2. A site is killed (SIGKILL) while it trains in round 2: the round closes at its deadline with min_sites = 2.
#   3. That site is started again and rejoins: round 3 has all three updates and the run completes with every
#      site's final evaluation.
# Usage: federation_faults_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir faults
fail() { echo "FAIL: $*"; tail -n 20 "$work"/logs/*.log; exit 1; }

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 3 --images 200 --image-size 32 --work "$work" --prepare-only \
  >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
port="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
model="$(ls models/open-source-*.ckpt | head -1)"
cat > coordinator/faults.textproto <<CFG
listen_address: "127.0.0.1:$port"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "../ca"
state_dir: "faults-state"
initial_model: "../$model"
task_wait_seconds: 2
auto_approve: true
CFG
db="$work/coordinator/faults-state/coordinator.db"
sql() { /usr/bin/python3 -c "import sqlite3, sys; r = sqlite3.connect('file:$db?mode=ro', uri=True).execute(sys.argv[1]).fetchall(); print('\n'.join('|'.join(map(str, x)) for x in r))" "$1"; }
# Polls until `sql "$1"` prints "$2" (at most $3 seconds).
wait_for() {
  for _ in $(seq $(( $3 * 10 ))); do [[ "$(sql "$1" 2>/dev/null)" == "$2" ]] && return 0; sleep 0.1; done
  fail "waited $3 s for [$1] = [$2], got [$(sql "$1" 2>/dev/null)]"
}

coordinator_pid=""
start_coordinator() {
  rm -f coordinator/port
  "$bin/fedtune-coordinator" --config coordinator/faults.textproto >>logs/coordinator-faults.log 2>&1 &
  coordinator_pid=$!
  pids+=($coordinator_pid)
  for _ in $(seq 300); do [[ -s coordinator/port ]] && return 0; sleep 0.1; done
  fail "the coordinator did not start"
}
declare -A site_pid
start_site() {
  sed "s/^coordinator: .*/coordinator: \"localhost:$port\"/" "$1/site.textproto.in" >"$1/faults.textproto"
  "$bin/fedtune-site" run --config "$1/faults.textproto" >>"logs/$1-faults.log" 2>&1 &
  site_pid[$1]=$!
  pids+=($!)
}
for id in site-a site-b site-c; do
  cat > "$id/site.textproto.in" <<CFG
site_id: "$id"
coordinator: "set by start_site"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "faults-work"
heartbeat_seconds: 1
exit_after_runs: 1
finetune {
  manifest: "data-32-200/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1
  split { train: 0.6 validation: 0.15 test: 0.25 }
}
CFG
done

export FEDTUNE_COORDINATOR="localhost:$port" FEDTUNE_CA="$work/ca/ca.pem"
export FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"
start_coordinator
start_site site-a
start_site site-b
start_site site-c
wait_for "SELECT COUNT(*) FROM sites WHERE status = 'approved'" 3 60
# site-c said hello and is selected, but is stopped before the run starts: round 1 waits for it.
kill -KILL "${site_pid[site-c]}"
cat > faults-run.textproto <<CFG
name: "faults" rounds: 3 min_sites: 2 round_deadline_seconds: 45 local_epochs: 1 learning_rate: 0.05 batch_size: 32
sites: "site-a" sites: "site-b" sites: "site-c"
CFG
run_id="$("$bin/fedtune" run start --config faults-run.textproto)"
echo "run $run_id started"

# 1. Coordinator killed with two accepted updates in the open round 1, restarted on the same port.
wait_for "SELECT COUNT(*) FROM updates WHERE run_id = '$run_id' AND round = 1 AND status = 'accepted'" 2 120
before="$(sql "SELECT site_id, sha256 FROM updates WHERE run_id = '$run_id' AND round = 1 AND status = 'accepted' ORDER BY site_id")"
[[ "$(sql "SELECT state FROM rounds WHERE run_id = '$run_id' AND round = 1")" == "open" ]] || fail "round 1 is not open"
kill -KILL "$coordinator_pid"
wait "$coordinator_pid" 2>/dev/null || true
echo "coordinator killed in round 1 with accepted updates from: $(echo "$before" | cut -d'|' -f1 | tr '\n' ' ')"
start_coordinator
start_site site-c
wait_for "SELECT state FROM rounds WHERE run_id = '$run_id' AND round = 1" closed 120
after="$(sql "SELECT site_id, sha256 FROM updates WHERE run_id = '$run_id' AND round = 1 AND status = 'accepted' ORDER BY site_id")"
grep -qF "$before" <<<"$after" || fail "updates accepted before the crash are gone: before [$before] after [$after]"
[[ "$(echo "$after" | wc -l)" == 3 ]] || fail "round 1 closed without all three updates: [$after]"
echo "ok   round 1 closed after the restart with all 3 updates; the 2 accepted before the crash kept"

# 2. site-c killed while it trains in round 2: the round closes at its deadline with min_sites.
wait_for "SELECT COUNT(*) FROM rounds WHERE run_id = '$run_id' AND round = 2 AND state = 'open'" 1 120
for _ in $(seq 600); do
  st="$(sql "SELECT state FROM sites WHERE site_id = 'site-c'")"
  [[ "$st" == *training* ]] && break
  sleep 0.05
done
kill -KILL "${site_pid[site-c]}"
echo "site-c killed in round 2 (its last state: $st)"
wait_for "SELECT state FROM rounds WHERE run_id = '$run_id' AND round = 2" closed 120
n2="$(sql "SELECT COUNT(*) FROM updates WHERE run_id = '$run_id' AND round = 2 AND status = 'accepted'")"
[[ "$n2" == 2 ]] || fail "round 2 closed with $n2 updates, expected 2"
echo "ok   round 2 closed at its deadline with 2 of 3 sites ($(sql "SELECT message FROM rounds WHERE run_id = '$run_id' AND round = 2"))"

# 3. site-c rejoins in round 3; the run completes.
start_site site-c
"$bin/fedtune" run status --run "$run_id" --watch --interval 1 >"$work/watch.out" 2>&1 || { tail -20 "$work/watch.out"; fail "run did not complete"; }
n3="$(sql "SELECT COUNT(*) FROM updates WHERE run_id = '$run_id' AND round = 3 AND status = 'accepted'")"
[[ "$n3" == 3 ]] || fail "round 3 has $n3 updates, expected 3 (site-c rejoined)"
finals="$(sql "SELECT COUNT(DISTINCT site_id) FROM metrics WHERE run_id = '$run_id' AND kind = 'final'")"
[[ "$finals" == 3 ]] || fail "$finals final evaluations, expected 3"
echo "ok   site-c rejoined in round 3 (3 updates); run completed with 3 final evaluations"
for id in site-a site-b site-c; do
  for _ in $(seq 100); do kill -0 "${site_pid[$id]}" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "${site_pid[$id]}" 2>/dev/null || fail "$id did not exit after its run (exit_after_runs: 1)"
done
echo "1 passed, 0 failed"
