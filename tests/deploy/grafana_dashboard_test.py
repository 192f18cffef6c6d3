#!/usr/bin/env python3
"""The Grafana dashboard and the Prometheus files of deploy/monitoring/, without running the programs (the live check,
every queried metric scraped from a running coordinator and site agent, is tests/integration/metrics_test.sh):
* the dashboard JSON loads and has Grafana's structure (tests/tools/grafana_dashboard_check.py);
* the PromQL reader finds the names in known expressions (it must not pass by finding nothing);
* every metric name the dashboard queries follows the naming contract (fedtune_coordinator_, fedtune_site_ or
  fedtune_process_; counters _total) and appears as a string literal in the programs' C++ sources;
* promtool accepts prometheus.yml and its rule file (deploy/setup.sh installs promtool).
Usage: grafana_dashboard_test.py REPO_ROOT"""
import json
import os
import shutil
import subprocess
import sys

root = sys.argv[1]
sys.path.insert(0, os.path.join(root, "tests", "tools"))
import grafana_dashboard_check as check  # noqa: E402

failures = []
passed = 0


def expect(ok, what):
    global passed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failures.append(what)
        print(f"FAIL {what}")


path = os.path.join(root, "deploy", "monitoring", "grafana-dashboard.json")
with open(path) as f:
    dashboard = json.load(f)
problems = check.structure_problems(dashboard)
expect(not problems, f"the dashboard's structure ({len(dashboard.get('panels', []))} panels): {problems}")

cases = {
    'histogram_quantile(0.95, sum by (method, le) (rate(fedtune_a_seconds_bucket{job=~"$j", code!="OK"}[5m])))':
        ["fedtune_a_seconds_bucket"],
    "time() - fedtune_b_timestamp_seconds{site=~\"${site}\"} > 1e3": ["fedtune_b_timestamp_seconds"],
    "label_values(fedtune_c{job=~\"$j\"}, site)": ["fedtune_c"],
    "fedtune_d == 1 and on() up{job='x'} offset 5m": ["fedtune_d", "up"],
    "sum without (instance) (increase(fedtune_e_total[$__rate_interval]))": ["fedtune_e_total"],
}
for expr, names in cases.items():
    expect(check.metric_names(expr) == names, f"metric_names({expr!r}) == {names} (got {check.metric_names(expr)})")

exprs = check.dashboard_exprs(dashboard)
queried = sorted({n for _, e in exprs for n in check.metric_names(e)})
expect(len(exprs) >= 30 and len(queried) >= 25, f"{len(exprs)} expressions query {len(queried)} metric names")
for group in ("fedtune_coordinator_site_state", "fedtune_coordinator_rpcs_total", "fedtune_coordinator_rounds_total",
              "fedtune_process_resident_memory_bytes", "fedtune_site_state", "fedtune_site_training_images_per_second",
              "fedtune_site_privacy_epsilon_spent"):
    expect(group in queried, f"the dashboard queries {group}")

for name in queried:
    expect(name.startswith(("fedtune_coordinator_", "fedtune_site_", "fedtune_process_")),
           f"{name}: a fedtune program's prefix")
    expect(check.in_sources(name, root), f"{name}: exported by the programs' sources")

promtool = shutil.which("promtool")
expect(promtool is not None, "promtool is installed (deploy/setup.sh installs Debian's prometheus package)")
if promtool:
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "fedtune-alerts.yml"]):
        r = subprocess.run([promtool] + args, cwd=os.path.join(root, "deploy", "monitoring"), capture_output=True,
                           text=True)
        expect(r.returncode == 0, f"promtool {' '.join(args)}: {(r.stdout + r.stderr).strip().splitlines()[-1:]}")

print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
