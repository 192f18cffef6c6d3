#!/usr/bin/env bash
# A site's own privacy budget with real processes (issue 14): the real coordinator and 3 real site agents on 127.0.0.1
# over mTLS, one run of 2 rounds with client-level DP-FedAvg under secure aggregation. site-a's budget (max_epsilon)
# lies between the epsilon of one round and of two (one Gaussian mechanism per round at q = 1: computed here with
# `fedtune privacy epsilon`), so site-a trains round 1 and declines round 2 before downloading anything; the run
# completes without it (min_sites 2). dp_clip_norm is tiny, so the noise (sigma * C) does not disturb training: the
# test is about the budget, not the model. Checks the coordinator's records (site-a's round-2 update "declined" with
# its reason, the others accepted, the run completed), site-a's log, and the consortium report (site-a's epsilon is
# one round's, the consortium's is the maximum).
# Usage: privacy_budget_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir budget
fail() { echo "FAIL: $*"; tail -n 15 "$work"/logs/*.log; exit 1; }

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 3 --images 80 --image-size 32 --pretrain-epochs 2 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
mkdir -p logs
start_coordinator b

sigma=2
eps1="$("$bin/fedtune" privacy epsilon --noise-multiplier $sigma --sample-rate 1 --steps 1 --delta 1e-5 --json |
  /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["epsilon"])')"
eps2="$("$bin/fedtune" privacy epsilon --noise-multiplier $sigma --sample-rate 1 --steps 2 --delta 1e-5 --json |
  /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["epsilon"])')"
budget="$(/usr/bin/python3 -c "print(($eps1 + $eps2) / 2)")"
echo "one round spends epsilon $eps1, two $eps2; site-a's budget $budget"
for id in site-a site-b site-c; do
  extra=""
  [[ $id == site-a ]] && extra="max_epsilon: $budget delta: 1e-5"
  cat > "$id/b.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "b-work"
heartbeat_seconds: 1
exit_after_runs: 1
$extra
finetune {
  manifest: "$(ls -d "$id"/data-* | head -1 | cut -d/ -f2)/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.15 test: 0.25 seed: 1 }
}
CFG
  "$bin/fedtune-site" run --config "$id/b.textproto" >"logs/$id.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 600); do [[ "$(sql "SELECT COUNT(*) FROM sites WHERE status = 'approved'")" == 3 ]] && break; sleep 0.1; done

cat > run.textproto <<CFG
name: "privacy budget" rounds: 2 min_sites: 2 round_deadline_seconds: 300 local_epochs: 1 learning_rate: 0.05
batch_size: 32 aggregation: "fedavg" compression: "fp32" final_evaluation: true
secure_aggregation: true secagg_threshold: 2 secagg_phase_seconds: 30
dp: "dp-fedavg" dp_noise_multiplier: $sigma dp_clip_norm: 1e-6
sites: "site-a" sites: "site-b" sites: "site-c"
CFG
run_id="$("$bin/fedtune" run start --config run.textproto)"
echo "started run $run_id"
"$bin/fedtune" run status --run "$run_id" --watch --interval 1 >watch.out 2>&1 || { tail -20 watch.out; fail "run $run_id did not complete"; }
[[ "$(sql "SELECT state FROM runs WHERE run_id = '$run_id'")" == completed ]] || fail "run $run_id is not completed"
r1="$(sql "SELECT site_id || ':' || status FROM updates WHERE run_id = '$run_id' AND round = 1 ORDER BY site_id" | tr '\n' ' ')"
r2="$(sql "SELECT site_id || ':' || status FROM updates WHERE run_id = '$run_id' AND round = 2 ORDER BY site_id" | tr '\n' ' ')"
echo "round 1: $r1"
echo "round 2: $r2"
[[ "$r1" == "site-a:accepted site-b:accepted site-c:accepted " ]] || fail "round 1 is not 3 accepted updates: $r1"
[[ "$r2" == "site-a:declined site-b:accepted site-c:accepted " ]] || fail "round 2 is not site-a declined, 2 accepted: $r2"
reason="$(sql "SELECT message FROM updates WHERE run_id = '$run_id' AND round = 2 AND site_id = 'site-a'")"
grep -q "max_epsilon" <<<"$reason" || fail "site-a's decline does not name its budget: $reason"
grep -q "privacy budget: declining" logs/site-a.log || fail "site-a did not log its decline"
# site-a downloaded only round 1's model: nothing of round 2 was trained there.
[[ ! -e site-a/b-work/runs/"$run_id"/round-2-1/model.ckpt ]] || fail "site-a trained round 2"
echo "ok   site-a trained round 1, declined round 2 (reason: ${reason:0:100}...), the run completed without it"

"$bin/fedtune" report --run "$run_id" --out report >report.out 2>&1 || { cat report.out; fail "the report failed"; }
/usr/bin/python3 - report/report.json "$eps1" <<'PY' || fail "the consortium report's privacy is wrong"
import json, sys
p = json.load(open(sys.argv[1]))["privacy"]
eps1 = float(sys.argv[2])
sites = {s["site_id"]: s for s in p["sites"]}
a = sites["site-a"]
ok = abs(a["epsilon"] - eps1) < 1e-6 * eps1 and a["declined_rounds"] == [2]
ok = ok and all(s["epsilon"] is not None for s in p["sites"])
ok = ok and abs(p["consortium_epsilon"] - max(s["epsilon"] for s in p["sites"])) < 1e-9
print(("ok   " if ok else "FAIL ") + f"report: site-a epsilon {a['epsilon']} (one round: {eps1}), declined {a['declined_rounds']}; "
      f"consortium epsilon {p['consortium_epsilon']} = the sites' maximum")
sys.exit(0 if ok else 1)
PY
echo "1 passed, 0 failed"
