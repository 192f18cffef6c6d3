#!/usr/bin/env bash
# Secure aggregation's overhead per round (issue 14): the real coordinator and N simulated sites (fedtune-loadgen,
# default 16) on a SoloNet-sized model (DenseNet-121 + ResNeXt50-32x4d + MobileNetV2, no training), one round of
# plain FedAvg, then one round of FedAvg with secure_aggregation, side by side in the same run of this script.
# Reports per run: the sites' CPU seconds (the load generator's user+system time over its sites: download, masking,
# upload, unmasking; no training), the coordinator's CPU seconds during the run, the bytes up and down
# (coordinator's transfer counts), and the round's wall time. A benchmark, not in CI (minutes, several GB of memory).
# Environment: FEDTUNE_SECAGG_SITES (16), FEDTUNE_SECAGG_WORK (build/secagg-overhead), FEDTUNE_SECAGG_ARCH (solonet).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
bin="$root/build/bin"
sites="${FEDTUNE_SECAGG_SITES:-16}"
arch="${FEDTUNE_SECAGG_ARCH:-solonet}"
work="${FEDTUNE_SECAGG_WORK:-$root/build/secagg-overhead}"
rm -rf "$work" && mkdir -p "$work" && cd "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done' EXIT

"$bin/fedtune" pki init --consortium "secagg benchmark" --out ca >/dev/null
"$bin/fedtune" pki server --ca-dir ca --out coordinator/pki --dns localhost --ip 127.0.0.1 >/dev/null
"$bin/fedtune" pki request --name operator --out operator >/dev/null
"$bin/fedtune" pki sign --csr operator/operator.csr --role operator --ca-dir ca --out operator/operator.pem >/dev/null
"$bin/fedtune-site" model init --arch "$arch" --image-size 64 --out model.ckpt >/dev/null
cat > coordinator/c.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "../ca"
state_dir: "state"
initial_model: "../model.ckpt"
task_wait_seconds: 5
auto_approve: true
max_concurrent_decodes: 2
CFG
"$bin/fedtune-coordinator" --config coordinator/c.textproto >coordinator.log 2>&1 &
coordinator=$!
pids+=($coordinator)
for _ in $(seq 600); do [[ -s coordinator/port ]] && break; sleep 0.1; done
port="$(cat coordinator/port)"
export FEDTUNE_COORDINATOR="localhost:$port" FEDTUNE_CA="$work/ca/ca.pem"
export FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"
cpu_of() { awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$1/stat"; }

# One run: $1 = label, $2 = extra run config. Prints one result line.
measure() {
  rm -f ready
  /usr/bin/time -f "%U %S %M" -o "loadgen-$1.time" "$bin/fedtune-loadgen" --coordinator "localhost:$port" \
    --certs certs --ca-dir ca --sites "$sites" --rounds 1 --train-seconds 1 --heartbeat-seconds 5 --task-wait 5 \
    --ready-file ready --work-dir "loadgen-$1" >"loadgen-$1.out" 2>"loadgen-$1.log" &
  local lg=$!
  for _ in $(seq 3000); do [[ -s ready ]] && break; kill -0 $lg 2>/dev/null || break; sleep 0.1; done
  [[ -s ready ]] || { tail -5 "loadgen-$1.log"; echo "secagg_overhead: the load generator did not get ready" >&2; exit 1; }
  local before
  before=$(cpu_of "$coordinator")
  cat > "run-$1.textproto" <<CFG
name: "$1" rounds: 1 min_sites: $sites round_deadline_seconds: 1800 final_evaluation: false aggregation: "fedavg"
compression: "fp32" $2
CFG
  local run_id
  run_id="$("$bin/fedtune" run start --config "run-$1.textproto")"
  wait $lg || { tail -5 "loadgen-$1.log"; echo "secagg_overhead: the load generator failed ($1)" >&2; exit 1; }
  "$bin/fedtune" run status --run "$run_id" --watch --interval 1 >/dev/null 2>&1 || true
  local after
  after=$(cpu_of "$coordinator")
  python3 - "$work/coordinator/state/coordinator.db" "$run_id" "$1" "$(cat "loadgen-$1.time")" "$before" "$after" \
    "$sites" <<'PY'
import sqlite3, sys
db, run_id, label, t, before, after, sites = sys.argv[1:]
user, system, maxrss_kb = t.split()
c = sqlite3.connect(db)
down, up = c.execute("SELECT SUM(bytes_down), SUM(bytes_up) FROM transfers WHERE run_id = ?", (run_id,)).fetchone()
opened, closed, state, msg = c.execute(
    "SELECT opened_ms, closed_ms, state, message FROM rounds WHERE run_id = ? ORDER BY attempt DESC", (run_id,)).fetchone()
site_cpu = float(user) + float(system)
print(f"{label:>8}: round {state} in {(closed - opened) / 1000:.1f} s; sites' CPU {site_cpu:.1f} s "
      f"({site_cpu / int(sites):.2f} s per site); coordinator CPU {float(after) - float(before):.1f} s; "
      f"bytes up {(up or 0) / 1e6:.1f} MB, down {(down or 0) / 1e6:.1f} MB; loadgen peak RSS {int(maxrss_kb) / 1024:.0f} MB")
print(f"          {msg}")
PY
}

echo "secure aggregation overhead: $sites sites, $arch ($(stat -c %s model.ckpt | awk '{printf "%.1f MB", $1 / 1e6}'))"
measure plain ""
measure secagg "secure_aggregation: true"
