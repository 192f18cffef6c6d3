# Shared set-up of the coordinator benchmarks (sourced by coordinator_memory.sh and consortium_scale.sh; not run on
# its own): a consortium PKI made with `fedtune pki`, a big model made with `fedtune-site model init`, a fresh
# fedtune-coordinator process per measurement, and readers of its /proc/PID/status. Named .bash so that
# deploy/bench.sh, which runs every tests/benchmarks/*/*.sh, does not run it on its own.
#
# The caller sets `bin` (directory of fedtune, fedtune-site, fedtune-coordinator) and runs in its work directory.
# Functions:
#   bench_pki                     ca/ (CA), coordinator-pki/ (server certificate for localhost/127.0.0.1), operator/
#                                 (an operator certificate); exports FEDTUNE_CA, FEDTUNE_CERT, FEDTUNE_KEY for `fedtune`.
#   bench_model ARCH OUT          `fedtune-site model init --arch ARCH --image-size 224 --seed 0 --out OUT`.
#   bench_start_coordinator DIR MODEL COORDINATOR_BIN [CONFIG_LINES]
#                                 writes DIR/coordinator.textproto (127.0.0.1:0, state DIR/state, initial model MODEL,
#                                 task_wait_seconds 1, then CONFIG_LINES), starts COORDINATOR_BIN with its log in
#                                 DIR/coordinator.log (environment words of $BENCH_COORDINATOR_ENV added), waits for its
#                                 port; sets coordinator_pid and coordinator_address (localhost:PORT) and exports
#                                 FEDTUNE_COORDINATOR. Returns 1 with a message when it does not start within 60 s.
#   bench_stop_coordinator        SIGTERM and wait (no-op when none runs).
#   kib FIELD PID                 a "FIELD: N kB" (or "Threads: N") value of /proc/PID/status.
#   mb KIB                        kibibytes as decimal megabytes, rounded.
coordinator_pid=""
coordinator_address=""

bench_pki() {
  "$bin/fedtune" pki init --consortium "coordinator benchmark" --out ca >/dev/null
  "$bin/fedtune" pki server --ca-dir ca --out coordinator-pki --dns localhost --ip 127.0.0.1 >/dev/null
  "$bin/fedtune" pki request --name operator --out operator >/dev/null
  "$bin/fedtune" pki sign --csr operator/operator.csr --role operator --ca-dir ca --out operator/operator.pem >/dev/null
  export FEDTUNE_CA="$PWD/ca/ca.pem" FEDTUNE_CERT="$PWD/operator/operator.pem" FEDTUNE_KEY="$PWD/operator/operator.key"
}

bench_model() {
  "$bin/fedtune-site" model init --arch "$1" --image-size 224 --seed 0 --out "$2" >/dev/null
}

bench_start_coordinator() {
  local dir="$1" model="$2" coordinator_bin="$3" extra="${4:-}"
  mkdir -p "$dir"
  rm -f "$dir/port"
  cat > "$dir/coordinator.textproto" <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "$PWD/coordinator-pki/server.pem"
server_key: "$PWD/coordinator-pki/server.key"
ca_dir: "$PWD/ca"
state_dir: "state"
initial_model: "$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"
task_wait_seconds: 1
$extra
CFG
  env ${BENCH_COORDINATOR_ENV:-} "$coordinator_bin" --config "$dir/coordinator.textproto" >"$dir/coordinator.log" 2>&1 &
  coordinator_pid=$!
  for _ in $(seq 600); do
    [[ -s "$dir/port" ]] && break
    kill -0 "$coordinator_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s "$dir/port" ]]; then
    echo "the coordinator did not start; see $dir/coordinator.log:" >&2
    tail -5 "$dir/coordinator.log" >&2
    return 1
  fi
  coordinator_address="localhost:$(cat "$dir/port")"
  export FEDTUNE_COORDINATOR="$coordinator_address"
}

bench_stop_coordinator() {
  if [[ -n "$coordinator_pid" ]]; then
    kill -TERM "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
    coordinator_pid=""
  fi
}

kib() { awk '/^'"$1"':/ {print $2}' "/proc/$2/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.0f", k * 1024 / 1e6}'; }
