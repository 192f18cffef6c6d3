#!/usr/bin/env bash
# Personalization end to end (issue 13): a real coordinator and two real site agents on 127.0.0.1 (tiny DenseNet +
# DuoNet, 32 px, 2 rounds of 1 epoch), one run with personalization FEDBN, one with SILOBN, one with DITTO. Checks, with
# personalization_check reading the files:
#   FEDBN (a) every update the coordinator accepted (its sha256 in coordinator.db, the bytes in the site's
#             runs/<run>/round-*/update.bin) carries exactly the shared tensors: no BatchNorm tensor left a site;
#         (b) the final global model's BatchNorm tensors are the base model's, bit for bit; its other tensors moved;
#         (c) each site's adapted checkpoint = the final global model's shared tensors + the site's own BatchNorm
#             tensors (equal to its runs/<run>/local_bn.bin, different from the global model's); the final
#             evaluation reported it.
#   SILOBN    the same with the BatchNorm running statistics only (the BatchNorm weights and biases are shared).
#   DITTO     the updates carry every tensor; each site kept a personal model (runs/<run>/personal.ckpt), its adapted
#             model is a personal model, not the global one.
# Usage: personalization_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir personalization
fail() { echo "FAIL: $*"; tail -n 20 "$work"/logs/*.log; exit 1; }
check="$bin/personalization_check"
[[ -x "$check" ]] || fail "$check is missing (built with the tests)"

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 2 --images 120 --image-size 32 --pretrain-epochs 2 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
mkdir -p logs
start_coordinator p

sites=(site-a site-b)
for id in "${sites[@]}"; do
  cat > "$id/p.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "p-work"
heartbeat_seconds: 1
exit_after_runs: 3
finetune {
  manifest: "$(ls -d "$id"/data-* | head -1 | cut -d/ -f2)/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.15 test: 0.25 seed: 1 }
}
CFG
  "$bin/fedtune-site" run --config "$id/p.textproto" >"logs/$id.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 600); do [[ "$(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'")" == 2 ]] && break; sleep 0.1; done

# Starts a run with personalization $1 (and extra config $2) and waits until it is completed; sets run_id.
run_id=""
run_with() {
  cat > "run-$1.textproto" <<CFG
name: "personalization $1" rounds: 2 min_sites: 2 round_deadline_seconds: 600 local_epochs: 1
learning_rate: 0.05 batch_size: 32 sites: "site-a" sites: "site-b"
personalization: $1 ${2:-}
CFG
  run_id="$("$bin/fedtune" run start --config "run-$1.textproto")"
  "$bin/fedtune" run status --run "$run_id" --watch --interval 1 >"watch-$1.out" 2>&1 ||
    { tail -20 "watch-$1.out"; fail "run $run_id ($1) did not complete"; }
  [[ "$(sql "SELECT state FROM runs WHERE run_id = '$run_id'")" == completed ]] || fail "run $run_id ($1) is not completed"
  echo "run $run_id ($1) completed"
}
# The model a run started from and its final model, as blob files.
blob() { echo "$work/coordinator/p-state/blobs/$1"; }
start_model() { blob "$(sql "SELECT model_digest FROM rounds WHERE run_id = '$1' AND round = 1 ORDER BY attempt LIMIT 1")"; }
final_model() { blob "$(sql "SELECT final_model_digest FROM runs WHERE run_id = '$1'")"; }
# The update files whose sha256 the coordinator accepted for run $1 (from each site's round dirs): sets updates.
updates=()
accepted_updates() {
  local site round sha f found rows
  updates=()
  rows="$(sql "SELECT site_id, round, sha256 FROM updates WHERE run_id = '$1' AND status = 'accepted' ORDER BY round, site_id")"
  while IFS='|' read -r site round sha; do
    found=""
    for f in "$site"/p-work/runs/"$1"/round-"$round"-*/update.bin; do
      [[ -f "$f" && "$(sha256sum "$f" | cut -d' ' -f1)" == "$sha" ]] && found="$f"
    done
    [[ -n "$found" ]] || fail "no update file of $site round $round with the accepted sha256 $sha"
    updates+=("$work/$found")
  done <<<"$rows"
  [[ ${#updates[@]} -eq 4 ]] || fail "${#updates[@]} accepted updates for run $1, expected 4 (2 sites x 2 rounds)"
  echo "run $1: ${#updates[@]} accepted updates found in the sites' round dirs"
}

# ---- FEDBN
run_with FEDBN
fedbn="$run_id"
accepted_updates "$fedbn"
"$check" updates fedbn "$(start_model "$fedbn")" "${updates[@]}" || fail "(a) a BatchNorm tensor left a site"
"$check" global fedbn "$(start_model "$fedbn")" "$(final_model "$fedbn")" ||
  fail "(b) the final global model's BatchNorm tensors are not the base model's"
for id in "${sites[@]}"; do
  "$check" adapted fedbn "$(final_model "$fedbn")" "$id/p-work/adapted/$fedbn/model.ckpt" \
    "$id/p-work/runs/$fedbn/local_bn.bin" || fail "(c) $id's adapted model is not the global model with its own BatchNorm"
  grep -q "stay at this site" "logs/$id.log" || fail "$id did not log what stays local"
done
finals="$(sql "SELECT COUNT(DISTINCT site_id) FROM metrics WHERE run_id = '$fedbn' AND kind = 'final'")"
[[ "$finals" == 2 ]] || fail "$finals final evaluations for run $fedbn, expected 2"
/usr/bin/python3 - "$db" "$fedbn" <<'PY' || fail "the final reports lack the adapted model or the personalization"
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
blobs = [r[0] for r in db.execute("SELECT report FROM metrics WHERE run_id = ? AND kind = 'final'", (sys.argv[2],))]
# The MetricsReport protos: each names the "adapted" model (field name) and carries personalization FEDBN (= 2).
ok = len(blobs) == 2 and all(b"adapted" in b for b in blobs)
print(("ok   " if ok else "FAIL ") + "both final reports evaluate the adapted model")
sys.exit(0 if ok else 1)
PY
echo "ok   FEDBN: no BatchNorm tensor left a site; the global model kept the base BatchNorm; adapted = global + own BatchNorm"

# ---- SILOBN
run_with SILOBN
silobn="$run_id"
accepted_updates "$silobn"
"$check" updates silobn "$(start_model "$silobn")" "${updates[@]}" || fail "a BatchNorm statistic left a site (SILOBN)"
"$check" global silobn "$(start_model "$silobn")" "$(final_model "$silobn")" ||
  fail "the final global model's BatchNorm statistics are not the base model's (SILOBN)"
for id in "${sites[@]}"; do
  "$check" adapted silobn "$(final_model "$silobn")" "$id/p-work/adapted/$silobn/model.ckpt" \
    "$id/p-work/runs/$silobn/local_bn.bin" || fail "$id's adapted model is not the global model with its own statistics"
done
echo "ok   SILOBN: no BatchNorm statistic left a site; the BatchNorm weights were shared"

# ---- DITTO
run_with DITTO "ditto_lambda: 0.5"
ditto="$run_id"
accepted_updates "$ditto"
"$check" updates ditto "$(start_model "$ditto")" "${updates[@]}" || fail "DITTO updates do not carry every tensor"
for id in "${sites[@]}"; do
  [[ -f "$id/p-work/runs/$ditto/personal.ckpt" ]] || fail "$id kept no personal model"
  [[ -d "$id/p-work/runs/$ditto/round-2-1/personal" ]] || fail "$id did not train a personal model in round 2"
  "$check" differ "$id/p-work/adapted/$ditto/model.ckpt" "$(final_model "$ditto")" ||
    fail "$id's adapted model is the global model, not its personal one"
  grep -q "toward this round's global model" "logs/$id.log" || fail "$id did not log its personal training"
done
echo "ok   DITTO: full updates; each site trained and kept a personal model, its adapted model"
echo "1 passed, 0 failed"
