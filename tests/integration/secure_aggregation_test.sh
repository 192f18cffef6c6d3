#!/usr/bin/env bash
# Secure aggregation end to end (issue 14): the real coordinator and 4 real site agents on 127.0.0.1 over mTLS (tiny
# DenseNet + DuoNet, 32 px), one run of 2 rounds with secure_aggregation, FedAvg. Checks, with secagg_check reading the
# files:
#   round 1 (all 4 sites): the new global model - the old one = plain FedAvg of the 4 sites' true deltas (their
#     fine-tuned models - the round's global model, weighted by training images), to the fixed-point bound;
#   round 2: site-d is frozen (SIGSTOP) right after it sent its key shares, before its masked upload; the round waits
#     for its deadline, then the 3 survivors reveal and the new global model = FedAvg of the survivors' deltas;
#   while round 2 waits, every upload file the coordinator stores (its spool) holds a masked vector whose correlation
#     with each site's true delta is ~0; no blob in the coordinator's store is anything but a model version (base or
#     aggregate), and no database row holds a tensor.
# Usage: secure_aggregation_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir secagg
fail() { echo "FAIL: $*"; tail -n 15 "$work"/logs/*.log; exit 1; }
check="$bin/secagg_check"
[[ -x "$check" ]] || fail "$check is missing (built with the tests)"

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 4 --images 80 --image-size 32 --pretrain-epochs 2 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
mkdir -p logs
# site-4 gets many more images, so that its training takes seconds: the window in which it is frozen below, after
# its shares and before its masked upload.
"$bin/fedtune" synth --profile site-a --count 4000 --size 32 --seed 77 --threads 2 --out site-4/data-large >/dev/null
start_coordinator s
state="$work/coordinator/s-state"

sites=(site-a site-b site-c site-4)
declare -A site_pid
for id in "${sites[@]}"; do
  cat > "$id/s.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "s-work"
heartbeat_seconds: 1
exit_after_runs: 1
finetune {
  manifest: "$(if [[ $id == site-4 ]]; then echo data-large; else ls -d "$id"/data-* | head -1 | cut -d/ -f2; fi)/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.15 test: 0.25 seed: 1 }
}
CFG
  FEDTUNE_LOG_LEVEL=0 "$bin/fedtune-site" run --config "$id/s.textproto" >"logs/$id.log" 2>&1 &
  pids+=($!)
  site_pid[$id]=$!
done
for _ in $(seq 600); do [[ "$(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'")" == 4 ]] && break; sleep 0.1; done

range=100
cat > run.textproto <<CFG
name: "secure aggregation" rounds: 2 min_sites: 3 round_deadline_seconds: 50 local_epochs: 1
learning_rate: 0.05 batch_size: 32 aggregation: "fedavg" compression: "fp32" final_evaluation: false
secure_aggregation: true secagg_threshold: 3 secagg_range: $range secagg_phase_seconds: 20
sites: "site-a" sites: "site-b" sites: "site-c" sites: "site-4"
CFG
run_id="$("$bin/fedtune" run start --config run.textproto)"
echo "started run $run_id"

round_state() { sql "SELECT state FROM rounds WHERE run_id = '$run_id' AND round = $1 ORDER BY attempt DESC LIMIT 1"; }
wait_round_closed() {
  for _ in $(seq 1800); do
    case "$(round_state "$1")" in
      closed) return 0 ;;
      failed|aborted) fail "round $1 $(round_state "$1"): $(sql "SELECT message FROM rounds WHERE run_id = '$run_id' AND round = $1")" ;;
    esac
    sleep 0.1
  done
  fail "round $1 did not close"
}
blob() { echo "$state/blobs/$1"; }
# "LOCAL.ckpt:N" of every site whose update round $1 accepted (the site's fine-tuned model of that round).
locals_of() {
  local rows site n
  rows="$(sql "SELECT site_id, num_samples FROM updates WHERE run_id = '$run_id' AND round = $1 AND status = 'accepted' ORDER BY site_id")"
  while IFS='|' read -r site n; do
    local f
    f="$(ls -d "$work/$site"/s-work/runs/"$run_id"/round-"$1"-*/model.ckpt | tail -1)"
    [[ -f "$f" ]] || fail "no fine-tuned model of $site in round $1"
    echo "$f:$n"
  done <<<"$rows"
}

# ---- Round 1: every site.
wait_round_closed 1
r1_old="$(blob "$(sql "SELECT model_digest FROM rounds WHERE run_id = '$run_id' AND round = 1 AND state = 'closed'")")"
r1_new="$(blob "$(sql "SELECT result_digest FROM rounds WHERE run_id = '$run_id' AND round = 1 AND state = 'closed'")")"
mapfile -t r1_locals < <(locals_of 1)
[[ ${#r1_locals[@]} -eq 4 ]] || fail "round 1 accepted ${#r1_locals[@]} updates, expected 4"
# The pre-scaling divisor: the largest num_samples of the key roster (all 4 sites, in both rounds).
max_n="$(sql "SELECT MAX(num_samples) FROM updates WHERE run_id = '$run_id' AND round = 1 AND status = 'accepted'")"
"$check" fedavg "$r1_old" "$r1_new" "$range" 4 "$max_n" "${r1_locals[@]}" || fail "round 1's aggregate is not FedAvg's"

# ---- Round 2: site-4 stops right after sending its shares (before training ends and its masked upload).
for _ in $(seq 1200); do
  grep -q "secure aggregation of run .* round 2 attempt [0-9]*: encrypted shares sent" "logs/site-4.log" 2>/dev/null && break
  sleep 0.05
done
grep -q "secure aggregation of run .* round 2 attempt [0-9]*: encrypted shares sent" "logs/site-4.log" || fail "site-4 never logged its round-2 shares"
kill -STOP "${site_pid[site-4]}"
echo "site-4 frozen after sending its round-2 shares"
# While the round waits for its deadline: the survivors' uploads are in the spool; copy them.
spool="$state/spool/$run_id"
for _ in $(seq 1200); do
  n=$(find "$spool" -maxdepth 1 -name "r2-*.upload" 2>/dev/null | wc -l)
  ((n >= 3)) && break
  sleep 0.05
done
mkdir -p spool-copy
cp "$spool"/r2-*.upload spool-copy/ 2>/dev/null || true
copied=(spool-copy/*.upload)
[[ -f "${copied[0]}" ]] || fail "no round-2 upload was seen in the coordinator's spool"
echo "copied ${#copied[@]} round-2 spool files"
wait_round_closed 2
kill -KILL "${site_pid[site-4]}" 2>/dev/null || true
r2_old="$(blob "$(sql "SELECT model_digest FROM rounds WHERE run_id = '$run_id' AND round = 2 AND state = 'closed'")")"
r2_new="$(blob "$(sql "SELECT result_digest FROM rounds WHERE run_id = '$run_id' AND round = 2 AND state = 'closed'")")"
mapfile -t r2_locals < <(locals_of 2)
[[ ${#r2_locals[@]} -eq 3 ]] || fail "round 2 accepted ${#r2_locals[@]} updates, expected the 3 survivors"
grep -q "site-4" <<<"${r2_locals[*]}" && fail "site-4's update was accepted in round 2"
"$check" fedavg "$r2_old" "$r2_new" "$range" 4 "$max_n" "${r2_locals[@]}" ||
  fail "round 2's aggregate is not the survivors' FedAvg"
r2_models=()
for l in "${r2_locals[@]}"; do r2_models+=("${l%:*}"); done
"$check" masked "$r2_old" "${copied[@]}" -- "${r2_models[@]}" || fail "a stored upload correlates with a true delta"

# ---- Nothing else at the coordinator holds a delta: every blob is a model version; no row holds tensor bytes.
for f in "$state"/blobs/*; do
  [[ -f "$f" ]] || continue
  d="$(basename "$f")"
  [[ "$(sql "SELECT COUNT(*) FROM model_versions WHERE digest = '$d'")" == 1 ]] || fail "blob $d is not a model version"
done
big="$(/usr/bin/python3 - "$db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
n = 0
for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
    cols = [c[1] for c in db.execute(f"PRAGMA table_info({t})")]
    for row in db.execute(f"SELECT * FROM {t}"):
        n += sum(1 for v in row if isinstance(v, (bytes, str)) and len(v) > 65536)
print(n)
PY
)"
[[ "$big" == 0 ]] || fail "$big database values are larger than 64 KiB"
echo "ok   every blob is a model version; no database value could hold a delta"
echo "1 passed, 0 failed"
