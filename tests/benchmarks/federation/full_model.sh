#!/usr/bin/env bash
# The study's full model through the federation (issue 12, point 7); a benchmark, not in CI (tens of minutes on 2
# CPU cores). Runs deploy/demo.sh --arch solonet: SoloNet (DenseNet-121 + ResNeXt50-32x4d + MobileNetV2, 1-channel,
# 14 outputs) plus the DuoNet lateral network, 3 sites, 2 rounds of 1 local epoch, ~60 images per site at 64 px, on
# CPU, through the real coordinator and site agents over mTLS on 127.0.0.1. The open-source model gets 1 epoch of
# pretraining (its quality does not matter here). Then it reports:
#   - the wall time of the whole demo and of each round (the coordinator's opened -> closed);
#   - per round, the non-training overhead: the round's critical path (the slowest site's download + checkpoint load
#     + fine-tuning + encode + upload, from the agents' "round timings" log lines, plus the coordinator's close: last
#     accepted upload -> round closed) minus the longest fine-tuning, as a share of that critical path (goal <= 5%);
#     the sites' evaluation after the upload is shown apart (it is the site's own work, not the federation's);
#   - bytes up and down (the coordinator's transfer counts) and the coordinator's peak RSS (VmHWM, sampled).
# Environment: FEDTUNE_FULL_MODEL_WORK (default build/full-model), FEDTUNE_FULL_MODEL_IMAGES (60),
#   FEDTUNE_FULL_MODEL_ARGS (extra demo.sh options). Needs build/bin (run deploy/setup.sh first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
work="${FEDTUNE_FULL_MODEL_WORK:-$root/build/full-model}"
images="${FEDTUNE_FULL_MODEL_IMAGES:-60}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

# The coordinator's VmHWM, sampled while the demo runs (the demo stops the coordinator when it ends).
rss_file="$work/coordinator-vmhwm.kb"
rm -f "$rss_file"
(
  while true; do
    for pid in $(pgrep -f "fedtune-coordinator --config coordinator/coordinator.textproto" || true); do
      [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$work" ]] || continue
      hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      [[ -n "$hwm" ]] && echo "$hwm" >"$rss_file.tmp" && mv "$rss_file.tmp" "$rss_file"
    done
    sleep 1
  done
) &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT

start=$(date +%s.%N)
rc=0
# INFO logs: the agents' "round timings" lines.
# shellcheck disable=SC2086
FEDTUNE_LOG_LEVEL=0 "$root/deploy/demo.sh" --no-setup --fresh --arch solonet --sites 3 --rounds 2 --local-epochs 1 --images "$images" \
  --image-size 64 --pretrain-epochs 1 --work "$work" ${FEDTUNE_FULL_MODEL_ARGS:-} >"$work.demo.log" 2>&1 || rc=$?
end=$(date +%s.%N)
kill $sampler 2>/dev/null || true
# The verdict (exit 3: an adapted model not better than the open-source one) does not matter for this benchmark.
if [[ $rc -ne 0 && $rc -ne 3 ]]; then
  echo "full_model: deploy/demo.sh failed (exit $rc); its output: $work.demo.log" >&2
  tail -20 "$work.demo.log" >&2
  exit 1
fi

python3 - "$work" "$(echo "$end - $start" | bc)" "$(cat "$rss_file" 2>/dev/null || echo 0)" <<'PY'
import glob, os, re, sqlite3, sys
work, wall, hwm_kb = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(os.path.join(work, "coordinator/state/coordinator.db"))
run_id, = db.execute("SELECT run_id FROM runs ORDER BY started_ms DESC LIMIT 1").fetchone()
timing = re.compile(r"round timings of run (\S+) round (\d+) attempt (\d+): (.*)")
steps = {}  # (round, site) -> {step: seconds}
for log in glob.glob(os.path.join(work, "logs", "site-*.log")):
    site = os.path.basename(log)[:-4]
    for line in open(log, errors="replace"):
        m = timing.search(line)
        if not m or m.group(1) != run_id:
            continue
        parts = dict((k, float(v)) for k, v in re.findall(r"([a-z-]+) ([0-9.]+) s", m.group(4)))
        steps[(int(m.group(2)), site)] = parts
model_bytes, = db.execute("SELECT bytes FROM model_versions ORDER BY created_ms LIMIT 1").fetchone()
down, up = db.execute("SELECT SUM(bytes_down), SUM(bytes_up) FROM transfers WHERE run_id = ?", (run_id,)).fetchone()
print(f"full model: run {run_id}, model {model_bytes / 1e6:.1f} MB, demo wall time {wall:.0f} s")
worst = 0.0
rounds = db.execute("SELECT round, opened_ms, closed_ms FROM rounds WHERE run_id = ? AND closed_ms > 0 "
                    "AND state = 'closed' ORDER BY round", (run_id,)).fetchall()
if not rounds:
    sys.exit("full_model: no closed round in " + run_id)
for rnd, opened, closed in rounds:
    last_up, = db.execute("SELECT MAX(received_ms) FROM updates WHERE run_id = ? AND round = ? AND status = 'accepted'",
                          (run_id, rnd)).fetchone()
    close_s = (closed - last_up) / 1000.0
    sites = {s: v for (r, s), v in steps.items() if r == rnd}
    if not sites:
        sys.exit(f"full_model: no 'round timings' lines for round {rnd} in {work}/logs")
    fed = {s: v.get("download", 0) + v.get("load", 0) + v.get("encode", 0) + v.get("upload", 0) for s, v in sites.items()}
    path = {s: fed[s] + v.get("fine-tuning", 0) for s, v in sites.items()}
    critical = max(path.values()) + close_s
    train = max(v.get("fine-tuning", 0) for v in sites.values())
    overhead = critical - train
    share = overhead / critical if critical > 0 else 0.0
    worst = max(worst, share)
    evaluation = max(v.get("evaluation", 0) + v.get("report", 0) for v in sites.values())
    per_site = ", ".join(f"{s} download {v.get('download', 0):.1f} s load {v.get('load', 0):.1f} s fine-tuning "
                         f"{v.get('fine-tuning', 0):.1f} s encode {v.get('encode', 0):.1f} s upload "
                         f"{v.get('upload', 0):.1f} s" for s, v in sorted(sites.items()))
    print(f"round {rnd}: wall {(closed - opened) / 1000:.1f} s (opened -> closed), critical path {critical:.1f} s, "
          f"longest fine-tuning {train:.1f} s, coordinator close {close_s:.2f} s, non-training overhead "
          f"{overhead:.1f} s = {100 * share:.1f}% of the round; sites' evaluation after the upload up to "
          f"{evaluation:.1f} s")
    print(f"  {per_site}")
print(f"bytes down {down / 1e6:.1f} MB, up {up / 1e6:.1f} MB; coordinator peak RSS {hwm_kb / 1024:.0f} MB "
      f"({hwm_kb * 1024 / model_bytes:.2f}x the model)")
print(f"full model: worst round overhead {100 * worst:.1f}% (goal <= 5%)")
PY
