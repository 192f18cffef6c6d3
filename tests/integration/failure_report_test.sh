#!/usr/bin/env bash
# A failure report from a site whose images are unreadable, end to end (issue 15): the real coordinator and two real
# site agents on 127.0.0.1 over mTLS (tiny models, 32 px). After `fedtune synth` wrote site-a's manifest, every image
# it lists is replaced with text; site-b is healthy. One run of 1 round, min_sites 1: site-a's training fails on its
# first image, the agent sends SiteService.ReportFailure (share_diagnostics left at its default, true) and retries;
# the round closes at its deadline with site-b's update and the run completes without site-a. Then:
#   - `fedtune sites show site-a` shows a report of that run: stage training, an error class and code, a message,
#     and the agent's log lines; and nothing in it (nor anywhere in the coordinator's database) names site-a's data
#     folder or any patient id of its manifest (the site scrubs them before sending);
#   - `fedtune sites list` marks site-a (its latest failure is newer than its last success), not site-b;
#   - `fedtune run status` lists site-a's failure under the sites table;
#   - the coordinator logged one WARNING line per report, and its metric fedtune_coordinator_site_failures_total
#     counts them (site-a, stage training; none for site-b).
# Usage: failure_report_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir failreport
fail() { echo "FAIL: $*"; tail -n 15 "$work"/logs/*.log; exit 1; }

"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 2 --images 80 --image-size 32 --pretrain-epochs 2 \
  --work "$work" --prepare-only >"$work/prepare.out" 2>&1 || { tail -20 "$work/prepare.out"; exit 1; }
cd "$work"
mkdir -p logs

# site-a's images become unreadable after its manifest was written: each file the manifest lists now holds text.
data_a="$(ls -d "$work"/site-a/data-* | head -1)"
manifest_a="$data_a/manifest.csv"
/usr/bin/python3 - "$manifest_a" "$work/patients.txt" <<'PY'
import csv, os, re, sys
manifest, patients_out = sys.argv[1], sys.argv[2]
root = os.path.dirname(manifest)
patients = set()
with open(manifest, newline="") as f:
    rows = list(csv.DictReader(f))
for row in rows:
    path = row["Path"]
    patients.update(re.findall(r"patient\d+", path))
    with open(os.path.join(root, path), "w") as image:
        image.write("this is not an image: a file overwritten after the manifest was written\n")
with open(patients_out, "w") as f:
    f.write("\n".join(sorted(patients)) + "\n")
print(f"site-a: {len(rows)} images replaced with text, {len(patients)} patients")
PY
[[ -s patients.txt ]] || fail "no patient id found in $manifest_a"

start_coordinator f
for id in site-a site-b; do
  cat > "$id/f.textproto" <<CFG
site_id: "$id"
coordinator: "localhost:$port"
site_cert: "pki/$id.pem"
site_key: "pki/$id.key"
ca_cert: "../ca/ca.pem"
work_dir: "f-work"
heartbeat_seconds: 1
min_backoff_ms: 200
max_backoff_ms: 2000
exit_after_runs: 1
finetune {
  manifest: "$(ls -d "$id"/data-* | head -1 | cut -d/ -f2)/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.15 test: 0.25 seed: 1 }
}
CFG
  "$bin/fedtune-site" run --config "$id/f.textproto" >"logs/$id.log" 2>&1 &
  pids+=($!)
done
wait_approved 2

cat > run.textproto <<CFG
name: "failure report" rounds: 1 min_sites: 1 round_deadline_seconds: 30 local_epochs: 1 learning_rate: 0.05
batch_size: 16 aggregation: "fedavg" compression: "fp32" final_evaluation: false
sites: "site-a" sites: "site-b"
CFG
run_id="$("$bin/fedtune" run start --config run.textproto)"
echo "started run $run_id"

# The run goes on without site-a: site-b's update, the round closed at its deadline, the run completed.
"$bin/fedtune" run status --run "$run_id" --watch --interval 1 >watch.out 2>&1 ||
  { tail -20 watch.out; fail "run $run_id did not complete"; }
updates="$(sql "SELECT site_id || ':' || status FROM updates WHERE run_id = '$run_id' ORDER BY site_id" | tr '\n' ' ')"
[[ "$updates" == "site-b:accepted " ]] || fail "round 1 is not site-b's update alone: $updates"
echo "ok   run $run_id completed with site-b's update alone"

# site-a reported its failure before the round closed (it failed at its first image); wait for it anyway.
for _ in $(seq 600); do
  [[ "$(sql "SELECT COUNT(*) FROM site_failures WHERE site_id = 'site-a' AND run_id = '$run_id'" 2>/dev/null)" -ge 1 ]] &&
    break
  sleep 0.1
done
reports="$(sql "SELECT COUNT(*) FROM site_failures WHERE site_id = 'site-a'")"
[[ "$reports" -ge 1 ]] || fail "site-a sent no failure report (SiteService.ReportFailure) for run $run_id"
[[ "$(sql "SELECT COUNT(*) FROM site_failures WHERE site_id = 'site-b'")" == 0 ]] || fail "site-b reported a failure"

"$bin/fedtune" sites show site-a >show.out 2>&1 || { cat show.out; fail "fedtune sites show site-a failed"; }
cat show.out
grep -q "^Failure reports (" show.out || fail "sites show lists no failure report"
grep -q "  $run_id round 1 attempt [0-9]* (TRAIN)$" show.out || fail "no report names run $run_id round 1 (TRAIN)"
grep -q "^  stage    training$" show.out || fail "no report has the stage training"
grep -Eq "^  error    [A-Z_]+ \(code [0-9]+\)" show.out || fail "no report has an error class and code"
grep -Eq "^  message  .{8,}" show.out || fail "no report has a message"
grep -q "^  log      last [0-9]* line(s) before the failure:$" show.out || fail "no report has log lines"
grep -q "^    | " show.out || fail "the log lines are not shown indented"

# Nothing that came from site-a names its data: not its data folder, not an image path or a patient id of its
# manifest; in what `sites show` printed, and in every file of the coordinator (its database and WAL, its log).
/usr/bin/python3 - "$manifest_a" show.out logs/coordinator.log coordinator/f-state <<'PY' || fail "site-a's data reached the coordinator"
import csv, os, sys
manifest, show, log, state = sys.argv[1:5]
data_dir = os.path.dirname(manifest)
needles = {data_dir, os.path.dirname(data_dir)}
for row in csv.DictReader(open(manifest, newline="")):
    needles.add(row["Path"])
    needles.add(row["Path"].split("/")[0])  # patientNNNNN
files = [show, log] + [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs]
found = []
for f in files:
    data = open(f, "rb").read()
    found += [(f, n) for n in needles if n.encode() in data]
print(f"{'FAIL' if found else 'ok  '} {len(needles)} needles (site-a's data folder, image paths, patient ids) in "
      f"{len(files)} files{': ' + str(found[:5]) if found else ''}")
sys.exit(1 if found else 0)
PY
echo "ok   sites show site-a: $reports report(s), stage training, class $(grep -Eo '^  error    [A-Z_]+' show.out | head -1 | awk '{print $2}'), no path or patient id"

"$bin/fedtune" sites list >list.out 2>&1 || { cat list.out; fail "fedtune sites list failed"; }
grep -Eq "^site-a .*! training [A-Z_]+ " list.out || { cat list.out; fail "sites list does not mark site-a's failure"; }
grep -Eq "^site-b .* -$" list.out || { cat list.out; fail "sites list shows a failure for site-b"; }
"$bin/fedtune" run status --run "$run_id" >status.out 2>&1 || { cat status.out; fail "fedtune run status failed"; }
grep -q "^Latest failure per site in this run" status.out || { cat status.out; fail "run status lists no failure"; }
grep -Eq "^  site-a: round 1 attempt [0-9]+, training, [A-Z_]+, " status.out ||
  { cat status.out; fail "run status does not show site-a's failure"; }
echo "ok   sites list marks site-a; run status shows its failure"

logged="$(grep -c "site site-a reported a failure in run $run_id" logs/coordinator.log || true)"
[[ "$logged" -ge 1 ]] || fail "the coordinator logged no WARNING for site-a's report"
echo "ok   the coordinator logged $logged WARNING line(s) for $reports report(s)"

# The metric against the stored reports, read around one scrape until no report arrived meanwhile.
for _ in 1 2 3 4 5; do
  before="$(sql "SELECT COUNT(*) FROM site_failures WHERE site_id = 'site-a'")"
  /usr/bin/python3 "$root/tests/integration/http_get.py" "http://127.0.0.1:$metrics_port/metrics" >metrics.txt ||
    fail "the coordinator's metrics endpoint"
  [[ "$(sql "SELECT COUNT(*) FROM site_failures WHERE site_id = 'site-a'")" == "$before" ]] && break
done
/usr/bin/python3 - metrics.txt "$before" <<'PY' ||
import re, sys
text, stored = open(sys.argv[1]).read(), int(sys.argv[2])
counts = {(m[0], m[1]): float(m[2]) for m in
          re.findall(r'^fedtune_coordinator_site_failures_total\{site="([^"]+)",stage="([^"]+)"\} (\S+)$', text, re.M)}
a_total = sum(v for (site, _), v in counts.items() if site == "site-a")
b_total = sum(v for (site, _), v in counts.items() if site == "site-b")
ok = counts.get(("site-a", "training"), 0) >= 1 and a_total == stored and b_total == 0
print(f"{'ok  ' if ok else 'FAIL'} fedtune_coordinator_site_failures_total: site-a {a_total} (training "
      f"{counts.get(('site-a', 'training'), 0)}; {stored} stored), site-b {b_total}")
sys.exit(0 if ok else 1)
PY
  fail "fedtune_coordinator_site_failures_total does not count the stored reports"
echo "1 passed, 0 failed"
