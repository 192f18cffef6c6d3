#!/usr/bin/env bash
# End to end (issue 5): a real fedtune-coordinator process and three real fedtune-site agents on 127.0.0.1 with
# certificates made by `fedtune pki`, tiny models and 32 px images, driven by the operator CLI through the demo's
# own flow (deploy/demo.sh). Then checks what each party keeps:
#   coordinator: one model version per round on top of the open-source model, every round closed with 3 accepted
#                updates, audit rows for allowed and refused calls;
#   each site:   its locally adapted checkpoint, a report per round and the final reports, its own SQLite;
#   operator:    the consortium report lists every site with a final evaluation; `model export` of the final model
#                gives a file with the announced digest; a revoked site is refused on its next call, and audited.
# Usage: federation_e2e_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/fedtune_fed_e2e_XXXXXX")"
trap 'rm -rf "$work"' EXIT

# At this scale the study's verdict differs between CPUs (see demo_test.sh): demo.sh's exit 3 ("not as in the
# study") is accepted when it agrees with the report; everything else must hold.
rc=0
"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 3 --rounds 3 --local-epochs 1 --images 200 --image-size 32 \
  --work "$work" >"$work/demo.out" 2>&1 || rc=$?
[[ $rc -eq 0 || $rc -eq 3 ]] || { tail -40 "$work/demo.out"; cat "$work"/logs/*.log | tail -40; exit 1; }
tail -12 "$work/demo.out"
run_id="$(sed -n 's/^started run //p' "$work/demo.out")"
[[ -n "$run_id" ]] || { echo "FAIL: no run id in the demo's output"; exit 1; }
"$root/tests/integration/check_verdict.py" "$work/report-$run_id/report.json" "$work/demo.out" "$rc" ||
  { echo "FAIL: the demo's verdict does not match its report"; exit 1; }

/usr/bin/python3 - "$work" "$run_id" <<'PY'
import glob, json, os, sqlite3, sys
work, run = sys.argv[1], sys.argv[2]
failures = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok: failures.append(what)

db = sqlite3.connect(f"file:{work}/coordinator/state/coordinator.db?mode=ro", uri=True)
state = db.execute("SELECT state FROM runs WHERE run_id = ?", (run,)).fetchone()[0]
check(state == "completed", f"run {run} completed (state {state})")
versions = db.execute("SELECT digest, parent_digest, round FROM model_versions ORDER BY rowid").fetchall()
check(len(versions) == 4 and versions[0][1] == "", f"4 model versions: the open-source model + one per round ({len(versions)})")
check(all(versions[i][1] == versions[i - 1][0] for i in range(1, len(versions))), "each version's parent is the previous one")
for digest, _, _ in versions:
    check(os.path.isfile(f"{work}/coordinator/state/blobs/{digest}"), f"blob {digest[:12]} on disk")
rounds = db.execute("SELECT round, state FROM rounds WHERE run_id = ? ORDER BY round", (run,)).fetchall()
check([r for r, s in rounds if s == "closed"] == [1, 2, 3], f"rounds 1-3 closed ({rounds})")
per_round = db.execute("SELECT round, COUNT(*) FROM updates WHERE run_id = ? AND status = 'accepted' GROUP BY round",
                       (run,)).fetchall()
check(per_round == [(1, 3), (2, 3), (3, 3)], f"3 accepted updates per round ({per_round})")
finals = db.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ? AND kind = 'final'", (run,)).fetchone()[0]
check(finals == 3, f"3 final metric reports ({finals})")
allowed = db.execute("SELECT COUNT(*) FROM audit_log WHERE decision = 'allow'").fetchone()[0]
check(allowed > 0, f"audit log has allowed calls ({allowed})")

for site in ("site-a", "site-b", "site-c"):
    base = f"{work}/{site}/work"
    check(os.path.isfile(f"{base}/adapted/{run}/model.ckpt"), f"{site}: locally adapted checkpoint")
    per_round_reports = sorted(glob.glob(f"{base}/runs/{run}/round-*/report.html"))
    check(len(per_round_reports) == 3, f"{site}: a report per round ({len(per_round_reports)})")
    finals = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(f"{base}/reports/{run}/*/report.html"))
    # The demo's run has the local-only baseline: open-source, global, adapted and local-only, paired.
    check(finals == ["adapted-vs-global", "adapted-vs-local-only", "adapted-vs-open-source", "global-vs-local-only",
                     "global-vs-open-source", "local-only-vs-open-source"], f"{site}: final reports ({finals})")
    check(os.path.isfile(f"{base}/site.db"), f"{site}: its own SQLite")

report = json.load(open(glob.glob(f"{work}/report-{run}/report.json")[0]))
ids = sorted(s["site_id"] for s in report["summary"])
check(ids == ["site-a", "site-b", "site-c"], f"consortium report lists every site ({ids})")
check(all(s["final_evaluation"] for s in report["summary"]), "every site sent its final evaluation")
check(all(s["mean_auc"]["local_only"] is not None for s in report["summary"]), "every site reported its local-only model")
# Nothing per case leaves a site: the coordinator's metrics hold summaries only (no image paths).
blobs = b"".join(r[0] for r in db.execute("SELECT report FROM metrics"))
check(b".png" not in blobs and b"patient" not in blobs, "no image paths or patient ids in the coordinator's metrics")
sys.exit(1 if failures else 0)
PY

# The operator exports the final global model; the file's digest is the version's.
export FEDTUNE_CA="$work/ca/ca.pem" FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"
coord_log="$work/logs/coordinator-2.log"
rm -f "$work/coordinator/port"
"$bin/fedtune-coordinator" --config "$work/coordinator/coordinator.textproto" >"$coord_log" 2>&1 &
coord=$!
trap 'kill $coord 2>/dev/null || true; wait $coord 2>/dev/null || true; [[ -n "${KEEP:-}" ]] || rm -rf "$work"' EXIT
for _ in $(seq 300); do [[ -s "$work/coordinator/port" ]] && break; sleep 0.1; done
port="$(cat "$work/coordinator/port")"
export FEDTUNE_COORDINATOR="localhost:$port"
final="$(/usr/bin/python3 -c "import sqlite3,sys; print(sqlite3.connect('file:$work/coordinator/state/coordinator.db?mode=ro', uri=True).execute(\"SELECT final_model_digest FROM runs WHERE run_id='$run_id'\").fetchone()[0])")"
"$bin/fedtune" model export --version "${final:0:12}" --out "$work/final.ckpt"
[[ "$(sha256sum "$work/final.ckpt" | cut -d' ' -f1)" == "$final" ]] || { echo "FAIL: exported digest"; exit 1; }
"$bin/fedtune-site" model info "$work/final.ckpt" >/dev/null
echo "ok   model export of the final global model ($final)"

# Revocation: the operator revokes site-b (registry and CA); its next call is refused and audited.
"$bin/fedtune" sites revoke site-b --reason "e2e test" --ca-dir "$work/ca"
rc=0
# The coordinator listens on a new port: site-b's config is copied with it.
sed "s/^coordinator: .*/coordinator: \"localhost:$port\"/" "$work/site-b/site.textproto" >"$work/site-b/site-2.textproto"
timeout 120 "$bin/fedtune-site" run --config "$work/site-b/site-2.textproto" >"$work/site-b-revoked.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] || { echo "FAIL: a revoked site was served"; exit 1; }
grep -qiE "PERMISSION_DENIED|revoked" "$work/site-b-revoked.log" || { echo "FAIL: no clear refusal"; tail "$work/site-b-revoked.log"; exit 1; }
denied="$(/usr/bin/python3 -c "import sqlite3; print(sqlite3.connect('file:$work/coordinator/state/coordinator.db?mode=ro', uri=True).execute(\"SELECT COUNT(*) FROM audit_log WHERE peer_cn='site-b' AND decision='deny'\").fetchone()[0])")"
[[ "$denied" -ge 1 ]] || { echo "FAIL: the refusal is not audited"; exit 1; }
echo "ok   revoked site-b refused (exit $rc) and audited ($denied denied calls)"
echo "1 passed, 0 failed"
