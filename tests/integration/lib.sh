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

# start_coordinator NAME: in a work directory prepared by `deploy/demo.sh --prepare-only` (cwd), writes
# coordinator/NAME.textproto (state_dir NAME-state, the prepared open-source model, auto_approve, 2 s long-polls,
# Prometheus metrics on a free 127.0.0.1 port), starts the coordinator (recorded in pids, log logs/coordinator.log)
# and waits for its port. Sets `port`, `metrics_port`, `db` (its coordinator.db) and the operator's environment for
# `fedtune`; `sql QUERY` prints the rows of a read-only query.
start_coordinator() {
  local model
  model="$(ls models/open-source-*.ckpt | head -1)"
  rm -f coordinator/port
  cat > "coordinator/$1.textproto" <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "../ca"
state_dir: "$1-state"
initial_model: "../$model"
task_wait_seconds: 2
auto_approve: true
metrics_listen_address: "127.0.0.1:0"
metrics_port_file: "$1.metrics-port"
CFG
  rm -f "coordinator/$1.metrics-port"
  db="$PWD/coordinator/$1-state/coordinator.db"
  "$bin/fedtune-coordinator" --config "coordinator/$1.textproto" >logs/coordinator.log 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do [[ -s coordinator/port ]] && break; sleep 0.1; done
  [[ -s coordinator/port ]] || { echo "FAIL: the coordinator did not start"; tail -n 15 logs/coordinator.log; exit 1; }
  port="$(cat coordinator/port)"
  metrics_port="$(cat "coordinator/$1.metrics-port")"  # Written before the gRPC port (the endpoint starts first).
  export FEDTUNE_COORDINATOR="localhost:$port" FEDTUNE_CA="$PWD/ca/ca.pem"
  export FEDTUNE_CERT="$PWD/operator/operator.pem" FEDTUNE_KEY="$PWD/operator/operator.key"
}

sql() {
  /usr/bin/python3 -c "import sqlite3, sys; r = sqlite3.connect('file:$db?mode=ro', uri=True).execute(sys.argv[1]).fetchall(); print('\n'.join('|'.join(map(str, x)) for x in r))" "$1"
}

# wait_approved N: waits up to 60 s until N sites are approved in the coordinator started by start_coordinator (they
# said Hello); fails the test otherwise.
wait_approved() {
  for _ in $(seq 600); do [[ "$(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'")" == "$1" ]] && return 0; sleep 0.1; done
  echo "FAIL: $(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'") of $1 sites said Hello within 60 s"
  tail -n 15 logs/*.log
  exit 1
}
