#!/usr/bin/env bash
# Link cuts with real processes (issue 12): a coordinator and a site agent on 127.0.0.1 talk through
# tests/tools/cutting_proxy.py, which paces both directions at 3 MB/s so that a transfer of the model (a freshly
# initialized MobileNetV2 at 32 px, 9 MB: several of the 1 MiB chunks that a transfer resumes at) takes seconds, and
# cuts the link (every connection reset, new ones refused for a moment):
#   1. while the site downloads the round's model (after 40% of the model's bytes went down), and
#   2. while it uploads its update (after 40% of the update's bytes went up).
# Checks: the run completes with one round and one attempt; the agent resumed the download from its .part file and
# the upload from the offset GetUploadOffset reported (both > 0, from its log) within the same task (the cuts did
# not fail it); the coordinator received fewer upload bytes than a restarted upload would have sent, and
# aggregated exactly one update.
# Usage: cut_resume_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir cut
fail() { echo "FAIL: $*"; tail -n 30 "$work"/logs/*.log; exit 1; }
# Hermetic: no proxy from the environment between the agent and the cutting proxy.
unset grpc_proxy https_proxy http_proxy no_grpc_proxy no_proxy GRPC_PROXY HTTPS_PROXY HTTP_PROXY NO_PROXY

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 1 --images 100 --image-size 32 --work "$work" --prepare-only \
  >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
model=models/mobilenet_v2-32.ckpt
"$bin/fedtune-site" model init --arch mobilenet_v2 --image-size 32 --seed 1 --out "$model" >/dev/null
model_bytes="$(stat -c %s "$model")"
cat > coordinator/cut.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "../ca"
state_dir: "cut-state"
initial_model: "../$model"
task_wait_seconds: 2
auto_approve: true
CFG
db="$work/coordinator/cut-state/coordinator.db"
sql() { /usr/bin/python3 -c "import sqlite3, sys; r = sqlite3.connect('file:$db?mode=ro', uri=True).execute(sys.argv[1]).fetchall(); print('\n'.join('|'.join(map(str, x)) for x in r))" "$1"; }
wait_for() {
  for _ in $(seq $(( $3 * 10 ))); do [[ "$(sql "$1" 2>/dev/null)" == "$2" ]] && return 0; sleep 0.1; done
  fail "waited $3 s for [$1] = [$2], got [$(sql "$1" 2>/dev/null)]"
}
proxy() { /usr/bin/python3 "$root/tests/tools/cutting_proxy.py" "$@"; }
cuts() { proxy ctl "$work/proxy.sock" status | /usr/bin/python3 -c 'import json, sys; print(len(json.load(sys.stdin)["cuts"]))'; }
wait_for_cuts() {
  for _ in $(seq 600); do [[ "$(cuts)" == "$1" ]] && return 0; sleep 0.1; done
  fail "the proxy made $(cuts) cut(s), expected $1"
}

"$bin/fedtune-coordinator" --config coordinator/cut.textproto >logs/coordinator-cut.log 2>&1 &
pids+=($!)
for _ in $(seq 300); do [[ -s coordinator/port ]] && break; sleep 0.1; done
[[ -s coordinator/port ]] || fail "the coordinator did not start"
# Started directly (not through the function): $! must be the proxy itself for the cleanup to stop it.
/usr/bin/python3 "$root/tests/tools/cutting_proxy.py" serve --target "127.0.0.1:$(cat coordinator/port)" \
  --port-file proxy.port --control "$work/proxy.sock" --rate-bytes-per-second 3000000 >logs/proxy.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s proxy.port ]] && break; sleep 0.1; done
[[ -s proxy.port ]] || fail "the proxy did not start"

cat > site-a/cut.textproto <<CFG
site_id: "site-a"
coordinator: "localhost:$(cat proxy.port)"
site_cert: "pki/site-a.pem"
site_key: "pki/site-a.key"
ca_cert: "../ca/ca.pem"
work_dir: "cut-work"
heartbeat_seconds: 1
min_backoff_ms: 200
max_backoff_ms: 2000
exit_after_runs: 1
finetune {
  manifest: "data-32-100/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1
  split { train: 0.6 validation: 0.15 test: 0.25 }
}
CFG
"$bin/fedtune-site" run --config site-a/cut.textproto >logs/site-a-cut.log 2>&1 &
site_pid=$!
pids+=($site_pid)
wait_for "SELECT COUNT(*) FROM sites WHERE status = 'approved'" 1 60

export FEDTUNE_COORDINATOR="localhost:$(cat coordinator/port)" FEDTUNE_CA="$work/ca/ca.pem"
export FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"
# 1. The download: cut once 40% of the model went down (the long-poll's few bytes count too, a small error).
proxy ctl "$work/proxy.sock" cut-after down $(( model_bytes * 4 / 10 )) 1.5 >/dev/null
cat > cut-run.textproto <<CFG
name: "cuts" rounds: 1 min_sites: 1 round_deadline_seconds: 300 local_epochs: 1 learning_rate: 0.05 batch_size: 32
sites: "site-a" final_evaluation: false
CFG
run_id="$("$bin/fedtune" run start --config cut-run.textproto)"
echo "run $run_id started; model $model_bytes bytes"
wait_for_cuts 1
echo "ok   link cut during the download"

# 2. The upload: armed once the download is cut; training sends only heartbeats (a few hundred bytes a second).
for _ in $(seq 600); do grep -q "resuming the download" logs/site-a-cut.log && break; sleep 0.1; done
update_bytes="$model_bytes"  # Dense fp32 deltas: the size of the model's tensors, a little under the checkpoint.
proxy ctl "$work/proxy.sock" cut-after up $(( update_bytes * 4 / 10 )) 1.5 >/dev/null
wait_for_cuts 2
echo "ok   link cut during the upload"

"$bin/fedtune" run status --run "$run_id" --watch --interval 1 >"$work/watch.out" 2>&1 ||
  { tail -20 "$work/watch.out"; fail "the run did not complete"; }
[[ "$(sql "SELECT state FROM runs WHERE run_id = '$run_id'")" == "completed" ]] || fail "run not completed"

# Resumed, not restarted: the offsets the agent logged.
down_at="$(grep -o 'resuming the download of model [0-9a-f]* at byte [0-9]*' logs/site-a-cut.log | head -1 | awk '{print $NF}')"
up_at="$(grep -o "resuming the upload of the update for run $run_id round 1 at byte [0-9]*" logs/site-a-cut.log | head -1 | awk '{print $NF}')"
[[ "${down_at:-0}" -gt 0 ]] || fail "no download resumed from an offset in the agent's log"
[[ "${up_at:-0}" -gt 0 ]] || fail "no upload resumed from an offset in the agent's log"
echo "ok   download resumed at byte $down_at of $model_bytes; upload resumed at byte $up_at"
# Within the transfer calls: the cuts did not fail the task (the agent retries a call until retry_give_up_seconds).
! grep -E "task [A-Z]+ of run .* failed" logs/site-a-cut.log || fail "a cut failed the task instead of being retried"

# Exactly one update, one round attempt, aggregated once.
[[ "$(sql "SELECT COUNT(*) FROM updates WHERE run_id = '$run_id' AND status = 'accepted'")" == 1 ]] ||
  fail "accepted updates: $(sql "SELECT site_id, round, attempt, status FROM updates WHERE run_id = '$run_id'")"
[[ "$(sql "SELECT COUNT(*) FROM rounds WHERE run_id = '$run_id'")" == 1 ]] ||
  fail "rounds: $(sql "SELECT round, attempt, state, message FROM rounds WHERE run_id = '$run_id'")"
[[ "$(sql "SELECT state FROM rounds WHERE run_id = '$run_id' AND round = 1")" == closed ]] || fail "round 1 not closed"
payload="$(sql "SELECT bytes FROM updates WHERE run_id = '$run_id' AND status = 'accepted'")"
bytes_up="$(sql "SELECT bytes_up FROM transfers WHERE run_id = '$run_id' AND site_id = 'site-a'")"
# A restarted upload would have sent the payload plus everything received before the cut (>= up_at) again.
[[ "$bytes_up" -lt $(( payload + up_at )) ]] ||
  fail "the coordinator received $bytes_up upload bytes for a $payload-byte payload resumed at $up_at"
echo "ok   1 update accepted, 1 round attempt; coordinator received $bytes_up upload bytes for a $payload-byte payload"
for _ in $(seq 100); do kill -0 "$site_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$site_pid" 2>/dev/null || fail "site-a did not exit after its run (exit_after_runs: 1)"
echo "1 passed, 0 failed"
