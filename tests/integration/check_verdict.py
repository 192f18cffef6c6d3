#!/usr/bin/python3
"""Checks that deploy/demo.sh's verdict agrees with its own consortium report.

Usage: check_verdict.py REPORT.json DEMO_OUTPUT EXIT_CODE

The study's verdict holds when every site's locally adapted model has a higher mean AUC than the open-source
model. The demo must print "As in the study" and exit 0 exactly then, and otherwise print "NOT as in the study"
naming each site where it fails, and exit 3. The per-site summary table must show the report's numbers. Prints what
it compared; exits 1 on any disagreement.
"""
import json
import re
import sys

report_path, out_path, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
report = json.load(open(report_path))
out = open(out_path).read()
failures = []

holds, worse = True, []
for s in report["summary"]:
    o, a = s["mean_auc"]["open_source"], s["mean_auc"]["adapted"]
    if o is None or a is None or not a > o:
        holds = False
        worse.append(s["site_id"])
    # The table line: "site-a   51  0.523 -> 0.518 -> 0.578 ..." (3 decimals of the same numbers).
    m = re.search(r"^%s +\d+ +(\d\.\d{3}|n/a) -> (\d\.\d{3}|n/a) -> (\d\.\d{3}|n/a)" % re.escape(s["site_id"]), out, re.M)
    if not m:
        failures.append(f"no table line for {s['site_id']}")
    elif o is not None and a is not None and (m.group(1) != f"{o:.3f}" or m.group(3) != f"{a:.3f}"):
        failures.append(f"{s['site_id']}: table says {m.group(1)} -> {m.group(3)}, report {o:.3f} -> {a:.3f}")
    print(f"{s['site_id']}: mean AUC open-source {o} -> adapted {a}")

if holds:
    if rc != 0 or "As in the study" not in out:
        failures.append(f"the report supports the study's verdict, but the demo exited {rc} without saying so")
else:
    if rc != 3 or "NOT as in the study" not in out:
        failures.append(f"the report does not support the verdict at {worse}, but the demo exited {rc}")
    for site in worse:
        if not re.search(r"NOT as in the study:.*\b%s\b" % re.escape(site), out):
            failures.append(f"the negative verdict does not name {site}")
print("verdict:", "as in the study" if holds else "not as in the study at " + ", ".join(worse))
for f in failures:
    print("FAIL", f)
sys.exit(1 if failures else 0)
