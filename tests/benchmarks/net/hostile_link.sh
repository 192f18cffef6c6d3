#!/usr/bin/env bash
# A hostile hospital link (issue 12), not in CI: needs root (network namespaces, tc). The script makes two network
# namespaces, a coordinator's and a site's, joined by a veth pair shaped to RATE (default 20 Mbit/s) in each
# direction with `tc qdisc ... tbf` (this kernel has tbf and htb, no netem). Latency comes from
# tests/tools/cutting_proxy.py in the coordinator's namespace (DELAY_MS each way, default 50: 100 ms round trip added),
# which the site dials across the shaped link. A real coordinator and a real site agent run a 2-round federation of
# a ~100 MB model (ResNeXt50-32x4d, freshly initialized, fp32 deltas); the proxy cuts the link for CUT_S (default
# 30) seconds once 40% of round 1's model download has gone through, and again once 40% of round 1's upload has.
# Checks: the run completes; the download resumed from the agent's .part file and the upload from the offset
# GetUploadOffset reported (both > 0); one update per round accepted; no deadline or keepalive fired (no
# DEADLINE_EXCEEDED, keepalive or too_many_pings in either log): the cuts show as UNAVAILABLE only.
# Prints the rounds' wall times side by side: round 1 (two cuts) against round 2 (none), and the transfer time the
# link allows (model bytes / RATE) as the baseline.
#
# Usage: sudo tests/benchmarks/net/hostile_link.sh [BUILD_DIR]   (default build)
# Environment: FEDTUNE_HL_RATE (tc rate, default 20mbit), FEDTUNE_HL_DELAY_MS (default 50), FEDTUNE_HL_CUT_S
#   (default 30), FEDTUNE_HL_ARCH (model init --arch, default resnext50_32x4d), FEDTUNE_HL_WORK (kept work dir;
#   default a new one under /tmp, removed at the end).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
bin="$build/bin"
rate="${FEDTUNE_HL_RATE:-20mbit}"
delay="${FEDTUNE_HL_DELAY_MS:-50}"
cut_s="${FEDTUNE_HL_CUT_S:-30}"
arch="${FEDTUNE_HL_ARCH:-resnext50_32x4d}"
[[ $(id -u) == 0 ]] || { echo "hostile_link.sh: SKIP: needs root (ip netns, tc)"; exit 0; }
for p in fedtune fedtune-site fedtune-coordinator; do
  [[ -x "$bin/$p" ]] || { echo "hostile_link.sh: $bin/$p is missing (build it first)" >&2; exit 1; }
done
keep_work=1
work="${FEDTUNE_HL_WORK:-}"
if [[ -z "$work" ]]; then work="$(mktemp -d /tmp/fedtune_hostile_link_XXXXXX)"; keep_work=0; fi
mkdir -p "$work/logs"
work="$(cd "$work" && pwd)"
ns_c="fedtune-hl-c-$$" ns_s="fedtune-hl-s-$$"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns_c" 2>/dev/null || true
  ip netns del "$ns_s" 2>/dev/null || true
  [[ $keep_work -eq 0 ]] && rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -n 20 "$work"/logs/*.log; exit 1; }
unset grpc_proxy https_proxy http_proxy no_grpc_proxy no_proxy
cd "$work"
in_c() { ip netns exec "$ns_c" "$@"; }
now() { date +%s.%N; }

# The link: 10.77.0.1 (coordinator) <-> 10.77.0.2 (site), tbf-shaped on both ends.
ip netns add "$ns_c"
ip netns add "$ns_s"
ip link add hl-c type veth peer name hl-s
ip link set hl-c netns "$ns_c"
ip link set hl-s netns "$ns_s"
in_c ip addr add 10.77.0.1/24 dev hl-c
ip netns exec "$ns_s" ip addr add 10.77.0.2/24 dev hl-s
for ns in "$ns_c" "$ns_s"; do ip netns exec "$ns" ip link set lo up; done
in_c ip link set hl-c up
ip netns exec "$ns_s" ip link set hl-s up
in_c tc qdisc add dev hl-c root tbf rate "$rate" burst 32kbit latency 400ms
ip netns exec "$ns_s" tc qdisc add dev hl-s root tbf rate "$rate" burst 32kbit latency 400ms
echo "link: veth $ns_c <-> $ns_s, tbf $rate each way; +${delay} ms each way in the proxy; cuts of $cut_s s"

export FEDTUNE_LOG_LEVEL=0
"$bin/fedtune" pki init --consortium "hostile link" --out ca >/dev/null
"$bin/fedtune" pki server --ca-dir ca --out pki --dns localhost --ip 127.0.0.1,10.77.0.1 >/dev/null
"$bin/fedtune" pki request --name operator --out operator >/dev/null
"$bin/fedtune" pki sign --csr operator/operator.csr --role operator --ca-dir ca --out operator/operator.pem >/dev/null
"$bin/fedtune-site" pki request --site-id site-a --out site >/dev/null
"$bin/fedtune" pki sign --csr site/site-a.csr --role site --ca-dir ca --out site/site-a.pem >/dev/null
"$bin/fedtune" synth --profile site-a --count 40 --size 32 --seed 1 --threads 2 --out data >/dev/null
"$bin/fedtune-site" model init --arch "$arch" --image-size 32 --seed 0 --out model.ckpt >/dev/null
model_bytes="$(stat -c %s model.ckpt)"
echo "model: $arch, $((model_bytes / 1000000)) MB"

cat > coordinator.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "ca"
state_dir: "state"
initial_model: "model.ckpt"
auto_approve: true
CFG
# Background processes are started with `ip netns exec` directly (it execs them): $! is then the process itself.
ip netns exec "$ns_c" "$bin/fedtune-coordinator" --config coordinator.textproto >logs/coordinator.log 2>&1 &
pids+=($!)
for _ in $(seq 600); do [[ -s port ]] && break; sleep 0.1; done
[[ -s port ]] || fail "the coordinator did not start"
ip netns exec "$ns_c" /usr/bin/python3 "$root/tests/tools/cutting_proxy.py" serve --listen 10.77.0.1:0 \
  --target "127.0.0.1:$(cat port)" --port-file proxy.port --control "$work/proxy.sock" \
  --delay-up-ms "$delay" --delay-down-ms "$delay" >logs/proxy.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s proxy.port ]] && break; sleep 0.1; done
[[ -s proxy.port ]] || fail "the proxy did not start"
proxy() { /usr/bin/python3 "$root/tests/tools/cutting_proxy.py" ctl "$work/proxy.sock" "$@"; }
cuts() { proxy status | /usr/bin/python3 -c 'import json, sys; print(len(json.load(sys.stdin)["cuts"]))'; }

cat > site.textproto <<CFG
site_id: "site-a"
coordinator: "10.77.0.1:$(cat proxy.port)"
site_cert: "site/site-a.pem"
site_key: "site/site-a.key"
ca_cert: "ca/ca.pem"
work_dir: "site-work"
exit_after_runs: 1
finetune {
  manifest: "data/manifest.csv"
  device: "cpu" threads: 2 loader_threads: 1
  split { train: 0.6 validation: 0.2 test: 0.2 }
}
CFG
ip netns exec "$ns_s" "$bin/fedtune-site" run --config site.textproto >logs/site.log 2>&1 &
site_pid=$!
pids+=($site_pid)
db="$work/state/coordinator.db"
sql() { /usr/bin/python3 -c "import sqlite3, sys; r = sqlite3.connect('file:$db?mode=ro', uri=True).execute(sys.argv[1]).fetchall(); print('\n'.join('|'.join(map(str, x)) for x in r))" "$1"; }
for _ in $(seq 1200); do [[ "$(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'" 2>/dev/null)" == 1 ]] && break; sleep 0.1; done
[[ "$(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'")" == 1 ]] || fail "the site was not approved"

export FEDTUNE_COORDINATOR="127.0.0.1:$(cat port)" FEDTUNE_CA="$work/ca/ca.pem"
export FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"
proxy cut-after down $((model_bytes * 4 / 10)) "$cut_s" >/dev/null
cat > run.textproto <<CFG
name: "hostile link" rounds: 2 min_sites: 1 round_deadline_seconds: 3600 local_epochs: 1 learning_rate: 0.01
batch_size: 8 sites: "site-a" final_evaluation: false
CFG
start="$(now)"
run_id="$(in_c "$bin/fedtune" run start --config run.textproto)"
echo "run $run_id started"
for _ in $(seq 6000); do [[ "$(cuts)" == 1 ]] && break; sleep 0.1; done
[[ "$(cuts)" == 1 ]] || fail "the download was not cut"
echo "link cut for $cut_s s during the round 1 download ($(printf '%.0f' "$(echo "$(now) - $start" | bc)") s into the run)"
for _ in $(seq 12000); do grep -q "resuming the download" logs/site.log && break; sleep 0.1; done
proxy cut-after up $((model_bytes * 4 / 10)) "$cut_s" >/dev/null
for _ in $(seq 12000); do [[ "$(cuts)" == 2 ]] && break; sleep 0.1; done
[[ "$(cuts)" == 2 ]] || fail "the upload was not cut"
echo "link cut for $cut_s s during the round 1 upload ($(printf '%.0f' "$(echo "$(now) - $start" | bc)") s into the run)"
in_c "$bin/fedtune" run status --run "$run_id" --watch --interval 5 >watch.out 2>&1 ||
  { tail -20 watch.out; fail "the run did not complete"; }
[[ "$(sql "SELECT state FROM runs WHERE run_id = '$run_id'")" == completed ]] || fail "the run did not complete"
total="$(echo "$(now) - $start" | bc)"

down_at="$(grep -o 'resuming the download of model [0-9a-f]* at byte [0-9]*' logs/site.log | head -1 | awk '{print $NF}')"
up_at="$(grep -o "resuming the upload of the update for run $run_id round 1 at byte [0-9]*" logs/site.log | head -1 | awk '{print $NF}')"
[[ "${down_at:-0}" -gt 0 ]] || fail "no download resumed from an offset"
[[ "${up_at:-0}" -gt 0 ]] || fail "no upload resumed from an offset"
for r in 1 2; do
  n="$(sql "SELECT COUNT(*) FROM updates WHERE run_id = '$run_id' AND round = $r AND status = 'accepted'")"
  [[ "$n" == 1 ]] || fail "round $r has $n accepted updates"
done
spurious="$(grep -iE "DEADLINE_EXCEEDED|keepalive|too_many_pings|too many pings" logs/site.log logs/coordinator.log || true)"
[[ -z "$spurious" ]] || { echo "$spurious" | head; fail "a deadline or keepalive fired"; }

rate_bits="$(echo "$rate" | sed 's/mbit/*1000000/; s/kbit/*1000/' | bc)"
ideal="$(echo "scale=1; $model_bytes * 8 / $rate_bits" | bc)"
round_s() { sql "SELECT printf('%.1f', (closed_ms - opened_ms) / 1000.0) FROM rounds WHERE run_id = '$run_id' AND round = $1 ORDER BY attempt DESC LIMIT 1"; }
echo "download resumed at byte $down_at of $model_bytes; upload resumed at byte $up_at; 1 update per round"
echo "no DEADLINE_EXCEEDED, keepalive or too_many_pings in the logs; attempts that failed during the cuts:" \
  "$(grep -c "UNAVAILABLE" logs/site.log) UNAVAILABLE lines in the agent's log"
printf '%-44s %10s\n' "" "seconds"
printf '%-44s %10s\n' "one model over the link (baseline, ideal)" "$ideal"
printf '%-44s %10s\n' "round 1: download + train + upload, 2 cuts" "$(round_s 1)"
printf '%-44s %10s\n' "round 2: download + train + upload, no cut" "$(round_s 2)"
printf '%-44s %10s\n' "whole run" "$(printf '%.1f' "$total")"
echo "hostile link: run completed, both transfers resumed from their offsets, no spurious deadline or keepalive"
