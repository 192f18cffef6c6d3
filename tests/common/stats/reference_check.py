#!/usr/bin/env python3
"""Cross-checks `fedtune stats compare` against independent implementations.

AUC: scikit-learn's roc_auc_score. DeLong variance, covariance and paired test: a NumPy O(m*n) implementation written
from DeLong et al. (1988). Wilcoxon: scipy.stats.wilcoxon. Youden: the maximum of tpr - fpr over scikit-learn's ROC
curve. Usage: reference_check.py PATH/TO/fedtune
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve


def delong_components(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def cov(ca, cb):
    (a10, a01), (b10, b01) = ca, cb
    return np.cov(a10, b10)[0, 1] / len(a10) + np.cov(a01, b01)[0, 1] / len(a01)


def main():
    fedtune = sys.argv[1]
    rng = np.random.default_rng(20261125)
    labels = [f"L{i}" for i in range(14)]
    n = 600
    truth = {}
    a = {}
    b = {}
    for i, name in enumerate(labels):
        prevalence = 0.05 + 0.03 * i
        y = (rng.random(n) < prevalence).astype(int)
        sa = np.round(0.7 * y + rng.normal(size=n), 1)  # Rounded: many ties.
        sb = np.round(0.5 * sa + (0.4 + 0.05 * i) * y + rng.normal(size=n), 1)
        t = y.astype(float).astype(str).astype(object)
        t[rng.random(n) < 0.05] = ""      # Excluded: blank.
        t[rng.random(n) < 0.05] = "-1.0"  # Excluded: uncertain.
        truth[name], a[name], b[name] = t, sa, sb
    ids = [f"patient{k:05d}/study1/view1_frontal.jpg" for k in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        def write(fname, table, order):
            with open(os.path.join(tmp, fname), "w") as f:
                f.write("Path,Sex," + ",".join(labels) + "\n" if table is truth else "Path," + ",".join(labels) + "\n")
                for k in order:
                    cells = [str(table[name][k]) for name in labels]
                    f.write(ids[k] + (",F," if table is truth else ",") + ",".join(cells) + "\n")
        write("t.csv", truth, range(n))
        write("a.csv", a, rng.permutation(n))  # Row order must not matter.
        write("b.csv", b, rng.permutation(n))
        out = os.path.join(tmp, "r.json")
        subprocess.run([fedtune, "stats", "compare", "--truth", os.path.join(tmp, "t.csv"), "--scores-a",
                        os.path.join(tmp, "a.csv"), "--scores-b", os.path.join(tmp, "b.csv"), "--out", out,
                        "--quiet"], check=True)
        report = json.load(open(out))

    failures = []

    def check(what, got, want, tol):
        if not (abs(got - want) <= tol):
            failures.append(f"{what}: fedtune {got!r} vs reference {want!r}")

    aucs_a, aucs_b = [], []
    for entry, name in zip(report["labels"], labels):
        keep = np.array([v in ("1.0", "0.0") for v in truth[name]])
        y = np.array([int(float(v)) for v in truth[name][keep]])
        sa, sb = a[name][keep], b[name][keep]
        check(f"{name} n_pos", entry["n_pos"], int(y.sum()), 0)
        check(f"{name} auc a", entry["a"]["auc"], roc_auc_score(y, sa), 1e-12)
        check(f"{name} auc b", entry["b"]["auc"], roc_auc_score(y, sb), 1e-12)
        ca, cb = delong_components(y, sa), delong_components(y, sb)
        va, vb, vab = cov(ca, ca), cov(cb, cb), cov(ca, cb)
        check(f"{name} variance a", entry["a"]["variance"], va, 1e-12)
        check(f"{name} variance b", entry["b"]["variance"], vb, 1e-12)
        z = (roc_auc_score(y, sa) - roc_auc_score(y, sb)) / math.sqrt(va + vb - 2 * vab)
        check(f"{name} delong z", entry["delong"]["z"], z, 1e-8)
        check(f"{name} delong p", entry["delong"]["p_value"], 2 * stats.norm.sf(abs(z)), 1e-10)
        lo = roc_auc_score(y, sa) - 1.959963984540054 * math.sqrt(va)
        check(f"{name} ci lo", entry["a"]["ci95"][0], max(0.0, lo), 1e-12)
        fpr, tpr, _ = roc_curve(y, sa)
        youden = entry["a"]["youden"]
        check(f"{name} youden J", youden["sensitivity"] + youden["specificity"] - 1, float(np.max(tpr - fpr)), 1e-12)
        aucs_a.append(roc_auc_score(y, sa))
        aucs_b.append(roc_auc_score(y, sb))
    w = stats.wilcoxon(aucs_a, aucs_b, correction=False)
    check("wilcoxon statistic", report["overall"]["wilcoxon"]["statistic"], w.statistic, 1e-9)
    check("wilcoxon p", report["overall"]["wilcoxon"]["p_value"], w.pvalue, 1e-12)
    check("mean auc a", report["overall"]["mean_auc_a"], float(np.mean(aucs_a)), 1e-12)
    if failures:
        print("\n".join(failures))
        print(f"0 passed, {len(failures)} failed")
        return 1
    print(f"checked {len(labels)} labels against scikit-learn/SciPy/NumPy: all agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
