#!/usr/bin/env bash
# Strategy comparison end to end at CI scale (issue 13): deploy/demo.sh --compare fedavg,fedbn with two sites, one
# round, 32 px images and the tiny model. `fedtune experiment` runs both strategies one after the other at a real
# coordinator with real site agents, then writes the comparison report. Checks that the report's JSON holds every
# site x strategy with finite mean AUCs (open-source, global, adapted), that every run started from the same base
# model, that wall times are recorded, that what was not reported is null in the JSON and "n/a" in the HTML, that
# `fedtune report compare` rebuilds the same report from the finished runs, and that no process is left.
# Strategy effects are not asserted: at this scale they are noise.
# Usage: compare_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/fedtune_compare_XXXXXX")"
trap 'pkill -KILL -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

rc=0
"$root/deploy/demo.sh" --no-setup --bin "$bin" --sites 2 --rounds 1 --local-epochs 1 --images 160 --image-size 32 \
  --pretrain-epochs 2 --compare fedavg,FedBN --work "$work/demo" >"$work/out" 2>&1 || rc=$?
[[ $rc -eq 0 ]] || { tail -40 "$work/out"; fail "demo.sh --compare exited $rc"; }
grep -q "fedavg: run .* completed" "$work/out" || { cat "$work/out"; fail "no progress line for the fedavg run"; }
grep -q "fedbn: run .* completed" "$work/out" || fail "no progress line for the fedbn run"
grep -Eq "^site-a +(0\.[0-9]{3}|1\.000|n/a) " "$work/out" || { cat "$work/out"; fail "no sites x models table"; }
grep -q "comparison report: .*comparison.html" "$work/out" || fail "no comparison report path"
[[ -z "$(pgrep -f -- "$work/demo" | grep -vx "$$" || true)" ]] || fail "processes left after the demo"

json="$work/demo/comparison/comparison.json"
html="$work/demo/comparison/comparison.html"
/usr/bin/python3 - "$json" "$html" <<'PY' || fail "the comparison report is incomplete (see above)"
import json, math, sys
r = json.load(open(sys.argv[1]))
html = open(sys.argv[2]).read()
problems = []
assert r["format"] == "fedtune-strategy-comparison-v1", r["format"]
names = [s["strategy"] for s in r["strategies"]]
if names != ["fedavg", "fedbn"]:
    problems.append(f"strategies {names}")
digests = {s["base_model_digest"] for s in r["strategies"]}
if len(digests) != 1 or not r["same_base_model"] or r["base_model_digest"] != digests.pop():
    problems.append(f"runs did not share one base model: {[s['base_model_digest'] for s in r['strategies']]}")
for s in r["strategies"]:
    if s["state"] != "completed":
        problems.append(f"{s['strategy']} run {s['run_id']}: {s['state']} {s['message']}")
    if not (isinstance(s["wall_seconds"], (int, float)) and s["wall_seconds"] > 0):
        problems.append(f"{s['strategy']}: wall time {s['wall_seconds']}")
if sorted(r["sites"]) != ["site-a", "site-b"]:
    problems.append(f"sites {r['sites']}")
cells = {(x["site_id"], x["strategy"]): x for x in r["results"]}
local_only_missing = False
for site in ["site-a", "site-b"]:
    for strategy in ["fedavg", "fedbn"]:
        x = cells.get((site, strategy))
        if x is None:
            problems.append(f"no result for {site} x {strategy}")
            continue
        if not x["final_evaluation"]:
            problems.append(f"{site} x {strategy}: no final evaluation")
        for model in ["open_source", "global", "adapted"]:
            m = x["models"][model]
            v = None if m is None else m["mean_auc"]
            if not (isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1):
                problems.append(f"{site} x {strategy}: mean AUC of {model} is {v}")
            elif m["ci_low"] is not None and not (m["ci_low"] <= v <= m["ci_high"]):
                problems.append(f"{site} x {strategy}: {model} CI [{m['ci_low']}, {m['ci_high']}] misses {v}")
        # The local-only baseline is another piece of work: when a site did not report it, everything of it is null.
        if x["models"]["local_only"] is None:
            local_only_missing = True
            if x["adapted_vs_local_only"] is not None:
                problems.append(f"{site} x {strategy}: a comparison with a local-only model that is absent")
        else:
            v = x["models"]["local_only"]["mean_auc"]
            if not (isinstance(v, float) and math.isfinite(v)):
                problems.append(f"{site} x {strategy}: local-only mean AUC {v}")
    # A site trains its local-only model once and reuses it for the next strategy (same base model and settings).
    local = {cells[(site, s)]["models"]["local_only"]["digest"] for s in ["fedavg", "fedbn"]
             if (site, s) in cells and cells[(site, s)]["models"]["local_only"] is not None}
    if len(local) > 1:
        problems.append(f"{site}: different local-only models across the runs: {local}")
    row = next(s for s in r["summary"] if s["site_id"] == site)
    for strategy in ["fedavg", "fedbn"]:
        if row["strategies"][strategy]["adapted"]["mean_auc"] is None:
            problems.append(f"summary {site}: no adapted mean AUC for {strategy}")
if local_only_missing and "n/a" not in html:
    problems.append("local-only is absent but the HTML shows no n/a")
for p in problems:
    print("problem:", p)
sys.exit(1 if problems else 0)
PY
# Reused, not trained again: each site has one local-only directory whose fine-tuning database records one
# fine-tuning (a second RunFinetune, even a resumed one, would record another).
for id in site-a site-b; do
  dbs=("$work/demo/$id/work/local-only"/*/site.db)
  [[ ${#dbs[@]} -eq 1 && -f "${dbs[0]}" ]] || fail "$id: ${#dbs[@]} local-only directories (want 1)"
  n="$(/usr/bin/python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM finetune_runs").fetchone()[0])' "${dbs[0]}")"
  [[ $n -eq 1 ]] || fail "$id: the local-only baseline was fine-tuned $n times for 2 runs (want once, then reused)"
done
echo "ok   demo --compare: 2 sites x 2 strategies, one base model, finite mean AUCs, the local-only model reused"

# The same report again from the finished runs, with the operator CLI.
runs="$(/usr/bin/python3 -c 'import json,sys; print(",".join(s["run_id"] for s in json.load(open(sys.argv[1]))["strategies"]))' "$json")"
# The demo stopped its coordinator; start it again on its state to serve the reports.
cd "$work/demo"
rm -f coordinator/port
"$bin/fedtune-coordinator" --config coordinator/coordinator.textproto >"$work/coordinator2.log" 2>&1 &
coordinator=$!
for _ in $(seq 300); do [[ -s coordinator/port ]] && break; sleep 0.1; done
[[ -s coordinator/port ]] || fail "the coordinator did not restart"
export FEDTUNE_COORDINATOR="localhost:$(cat coordinator/port)" FEDTUNE_CA="$work/demo/ca/ca.pem"
export FEDTUNE_CERT="$work/demo/operator/operator.pem" FEDTUNE_KEY="$work/demo/operator/operator.key"
"$bin/fedtune" report compare --runs "$runs" --out "$work/again" >"$work/again.out" 2>&1 ||
  { cat "$work/again.out" "$work/coordinator2.log"; kill "$coordinator"; fail "report compare failed"; }
kill "$coordinator"; wait "$coordinator" 2>/dev/null || true
/usr/bin/python3 - "$json" "$work/again/comparison.json" <<'PY' || fail "report compare differs from the experiment's report"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["results"] == b["results"], "results differ"
assert [s["run_id"] for s in a["strategies"]] == [s["run_id"] for s in b["strategies"]]
assert [s["strategy"] for s in b["strategies"]] == ["fedavg", "fedbn"], b["strategies"]
PY
echo "ok   report compare --runs $runs rebuilt the same report"

# A strategy the experiment does not know is refused before anything starts, naming it (exit 2).
printf 'base { rounds: 1 }\nstrategies: "fedavg"\nstrategies: "fedsgd"\n' >"$work/bad.textproto"
rc=0
"$bin/fedtune" experiment --config "$work/bad.textproto" >"$work/bad.out" 2>&1 || rc=$?
[[ $rc -eq 2 ]] || { cat "$work/bad.out"; fail "an unknown strategy exited $rc, not 2"; }
grep -q "'fedsgd'" "$work/bad.out" || { cat "$work/bad.out"; fail "the error does not name the unknown strategy"; }
echo "ok   an unknown strategy is refused, named"
echo "3 passed, 0 failed"
