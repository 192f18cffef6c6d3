#!/usr/bin/env bash
# Bytes and AUC change for fp16, int8 and top-k deltas against fp32 (issue 5's benchmark): the demo consortium
# (deploy/demo.sh: real coordinator, real site agents, mTLS on loopback) at a small scale, once per compression, all
# from ONE prepared work directory (same PKI, same synthetic data, same open-source model, same seeds), and a table
# of bytes uploaded (report.json run.bytes_up) and the mean AUC (over sites) of the final global model and of the
# sites' locally adapted models (report.json summary[].mean_auc), each against fp32. fp32 runs a second time
# ("fp32-repeat") to show the run-to-run noise of the AUCs (multi-threaded training is not bit-reproducible).
#
# Usage: tests/benchmarks/net/compression_bench.sh [BUILD_DIR]   (default build; uses BUILD_DIR/bin)
# Environment: FEDTUNE_COMPRESSION_WORK (default a new directory under /tmp, kept: it holds the reports),
#   FEDTUNE_COMPRESSION_ARGS (default "--sites 3 --rounds 3 --images 400 --image-size 64"),
#   FEDTUNE_COMPRESSIONS (default "fp32 fp32-repeat fp16 int8 topk"; the first is the reference; NAME-repeat runs
#   NAME again).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
work="${FEDTUNE_COMPRESSION_WORK:-$(mktemp -d /tmp/fedtune_compression_XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
read -r -a args <<<"${FEDTUNE_COMPRESSION_ARGS:---sites 3 --rounds 3 --images 400 --image-size 64}"
read -r -a compressions <<<"${FEDTUNE_COMPRESSIONS:-fp32 fp32-repeat fp16 int8 topk}"
demo=("$root/deploy/demo.sh" --no-setup --bin "$build/bin" "${args[@]}")

echo "compression benchmark in $work (${args[*]}); load: $(uptime | sed 's/.*load average/load average/')"
"${demo[@]}" --work "$work/prepared" --prepare-only >"$work/prepare.log" 2>&1 ||
  { echo "preparing failed; see $work/prepare.log" >&2; tail -5 "$work/prepare.log" >&2; exit 1; }
for c in "${compressions[@]}"; do
  rm -rf "${work:?}/$c"
  cp -a "$work/prepared" "$work/$c"
  start=$(date +%s)
  # demo.sh exits 3 when an adapted model does not beat the open-source one: a finding, not a failure here.
  rc=0
  "${demo[@]}" --work "$work/$c" --compression "${c%-repeat}" >"$work/$c.log" 2>&1 || rc=$?
  echo "$c: demo exit $rc in $(( $(date +%s) - start )) s (log $work/$c.log)"
  ((rc == 0 || rc == 3)) || { tail -5 "$work/$c.log" >&2; exit 1; }
done

/usr/bin/python3 - "$work" "${compressions[@]}" <<'PY'
import glob, json, sys
work, names = sys.argv[1], sys.argv[2:]
rows = {}
for c in names:
    reports = sorted(glob.glob(f"{work}/{c}/report-*/report.json"))
    if not reports:
        sys.exit(f"no report.json for {c} under {work}/{c}")
    r = json.load(open(reports[-1]))
    def mean(key):
        v = [s["mean_auc"][key] for s in r["summary"] if s["mean_auc"][key] is not None]
        return sum(v) / len(v) if v else float("nan")
    rows[c] = (r["run"]["bytes_up"], mean("open_source"), mean("global"), mean("adapted"),
               {s["site_id"]: (s["mean_auc"]["global"], s["mean_auc"]["adapted"]) for s in r["summary"]})
ref = rows[names[0]]
print()
print(f"delta compression vs {names[0]} (bytes up: the whole run's uploads; AUC: mean over sites of each site's mean"
      " AUC on its test split)")
print(f"{'encoding':<12}{'bytes up':>14}{'ratio':>8}{'open-src AUC':>14}{'global AUC':>12}{'d global':>10}"
      f"{'adapted AUC':>13}{'d adapted':>11}")
for c in names:
    b, o, g, a, _ = rows[c]
    print(f"{c:<12}{b:>14,}{b / ref[0]:>8.3f}{o:>14.4f}{g:>12.4f}{g - ref[2]:>+10.4f}{a:>13.4f}{a - ref[3]:>+11.4f}")
print()
print("per site (global / adapted mean AUC):")
for c in names:
    print(f"  {c:<11} " + "  ".join(f"{s}: {g:.4f} / {a:.4f}" for s, (g, a) in sorted(rows[c][4].items())))
PY
echo "load after: $(uptime | sed 's/.*load average/load average/')"
