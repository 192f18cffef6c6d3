#!/usr/bin/env bash
# Cross-site evaluation end to end (issue 13): a real coordinator and three real site agents on 127.0.0.1, tiny
# models and 32 px images, one round, cross_site_evaluation on; site-a and site-b consent to share their adapted
# models (share_adapted_model: true), site-c declines. Checks:
#   - the run completes and every agent exits after it (exit_after_runs: 1 counts the run once its cross-site
#     evaluation is done);
#   - the coordinator holds exactly the two shared models (blobs and shared_models) and three "cross_site" reports;
#   - the consortium report's cross_site matrix is 5 x 3 (three adapted models, global, open-source by three sites)
#     with a finite mean AUC in every cell but site-c's row off its diagonal, which says "not shared";
#   - no image path, file name or patient id of any site's manifest reached the coordinator: every file under its
#     state directory (coordinator.db, WAL, blobs, spool), its log and the consortium report are searched as bytes.
# Usage: cross_site_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir xsite
fail() { echo "FAIL: $*"; tail -n 20 "$work"/logs/*xsite*.log; exit 1; }

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 3 --images 160 --image-size 32 --pretrain-epochs 2 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
model="$(ls models/open-source-*.ckpt | head -1)"
data="$(cd site-a && ls -d data-* | head -1)"
rm -f coordinator/port
cat > coordinator/xsite.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "../ca"
state_dir: "xsite-state"
initial_model: "../$model"
task_wait_seconds: 2
auto_approve: true
CFG
"$bin/fedtune-coordinator" --config coordinator/xsite.textproto >logs/coordinator-xsite.log 2>&1 &
pids+=($!)
for _ in $(seq 300); do [[ -s coordinator/port ]] && break; sleep 0.1; done
[[ -s coordinator/port ]] || fail "the coordinator did not start"
port="$(cat coordinator/port)"
export FEDTUNE_COORDINATOR="localhost:$port" FEDTUNE_CA="$work/ca/ca.pem"
export FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"

declare -A site_pid
for id in site-a site-b site-c; do
  share=true
  [[ "$id" == site-c ]] && share=false
  cat > "$id/xsite.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "xsite-work"
heartbeat_seconds: 1
exit_after_runs: 1
share_adapted_model: $share
gradcam_per_label: 0
finetune {
  manifest: "$data/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1
  split { train: 0.6 validation: 0.15 test: 0.25 }
}
CFG
  "$bin/fedtune-site" run --config "$id/xsite.textproto" >"logs/$id-xsite.log" 2>&1 &
  site_pid[$id]=$!
  pids+=($!)
done
approved() {
  /usr/bin/python3 -c "import sqlite3; print(sqlite3.connect('file:$work/coordinator/xsite-state/coordinator.db?mode=ro', uri=True).execute(\"SELECT COUNT(*) FROM sites WHERE status = 'approved'\").fetchone()[0])" 2>/dev/null || echo 0
}
for _ in $(seq 600); do [[ "$(approved)" == 3 ]] && break; sleep 0.1; done
[[ "$(approved)" == 3 ]] || fail "the three sites did not say hello"
cat > xsite-run.textproto <<CFG
name: "cross-site" rounds: 1 min_sites: 3 round_deadline_seconds: 600 local_epochs: 1 learning_rate: 0.05
batch_size: 32 sites: "site-a" sites: "site-b" sites: "site-c" cross_site_evaluation: true
CFG
run_id="$("$bin/fedtune" run start --config xsite-run.textproto)"
echo "run $run_id started"
"$bin/fedtune" run status --run "$run_id" --watch --interval 1 >"$work/watch.out" 2>&1 ||
  { tail -20 "$work/watch.out"; fail "run did not complete"; }
for id in site-a site-b site-c; do
  rc=0
  for _ in $(seq 300); do kill -0 "${site_pid[$id]}" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "${site_pid[$id]}" 2>/dev/null || fail "$id did not exit after its run (exit_after_runs: 1)"
  wait "${site_pid[$id]}" || rc=$?
  [[ $rc -eq 0 ]] || fail "$id exited with $rc"
done
grep -q "declined to share its adapted model" logs/site-c-xsite.log || fail "site-c did not log that it declined"
echo "ok   run completed; the three agents exited after their cross-site evaluation"
"$bin/fedtune" report --run "$run_id" --out "report-$run_id" >/dev/null || fail "no consortium report"

/usr/bin/python3 - "$work" "$run_id" <<'PY'
import csv, glob, json, math, os, sqlite3, sys
work, run = sys.argv[1], sys.argv[2]
failures = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok: failures.append(what)

state = f"{work}/coordinator/xsite-state"
db = sqlite3.connect(f"file:{state}/coordinator.db?mode=ro", uri=True)
shared = db.execute("SELECT site_id, digest FROM shared_models WHERE run_id = ? ORDER BY site_id", (run,)).fetchall()
check([s for s, _ in shared] == ["site-a", "site-b"], f"site-a and site-b shared their adapted models ({shared})")
check(all(os.path.isfile(f"{state}/blobs/{d}") for _, d in shared), "the shared models are blobs")
cross = db.execute("SELECT site_id FROM metrics WHERE run_id = ? AND kind = 'cross_site' ORDER BY site_id",
                   (run,)).fetchall()
check([c[0] for c in cross] == ["site-a", "site-b", "site-c"], f"three cross_site reports ({cross})")

r = json.load(open(f"{work}/report-{run}/report.json"))["cross_site"]
check(r["sites"] == ["site-a", "site-b", "site-c"], f"columns {r['sites']}")
check(r["models"] == ["adapted model of site-a", "adapted model of site-b", "adapted model of site-c", "global",
                      "open-source"], f"rows {r['models']}")
check(r["not_shared"] == ["site-c"], f"not shared: {r['not_shared']}")
auc = r["mean_auc"]
check(len(auc) == 5 and all(len(row) == 3 for row in auc), "a 5 x 3 matrix")
for i, row in enumerate(auc):
    for j, v in enumerate(row):
        declined = i == 2 and j != 2
        if declined:
            check(v is None and r["cell_status"][i][j] == "not shared", f"cell {i},{j} (site-c's model) not shared")
        else:
            check(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1, f"cell {i},{j} finite mean AUC ({v})")
check(all(p is None for p in r["delong_p_vs_global"][3]), "no p-value on the global row")
html = open(f"{work}/report-{run}/report.html", encoding="utf-8").read()
check("not shared" in html and "adapted model of site-c" in html, "report.html shows the matrix with 'not shared'")

# Nothing from the sites' manifests reached the coordinator: image paths, file names, patient ids, data dirs.
needles = set()
for site in ("site-a", "site-b", "site-c"):
    manifest = glob.glob(f"{work}/{site}/data-*/manifest.csv")[0]
    needles.add(os.path.dirname(manifest).encode())
    needles.add(manifest.encode())
    for row in csv.DictReader(open(manifest)):
        path = row["Path"]
        needles.add(path.encode())
        needles.add(os.path.basename(path).encode())
        needles.add(path.split("/")[0].encode())  # patientNNNNN
files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs]
files += glob.glob(f"{work}/logs/coordinator-xsite.log") + glob.glob(f"{work}/report-{run}/*")
found = []
for f in files:
    data = open(f, "rb").read()
    for n in needles:
        if n in data:
            found.append((os.path.relpath(f, work), n.decode()))
check(not found, f"no image path, file name or patient id in {len(files)} coordinator files ({found[:5]})")
check(len(needles) > 100, f"{len(needles)} needles searched")
# The search finds what is there: the site's own adapted checkpoint (kept at the site) names its data folder in its
# provenance; the shared copy does not.
own = open(glob.glob(f"{work}/site-a/xsite-work/adapted/*/model.ckpt")[0], "rb").read()
data_dir = os.path.dirname(glob.glob(f"{work}/site-a/data-*/manifest.csv")[0]).encode()
check(data_dir in own, "control: the site's own adapted checkpoint names its data folder")
sys.exit(1 if failures else 0)
PY
echo "1 passed, 0 failed"
