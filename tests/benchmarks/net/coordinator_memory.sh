#!/usr/bin/env bash
# Coordinator peak memory with 1, 8 and 32 simultaneously uploading sites (issue 5's benchmark): for each N, a fresh
# fedtune-coordinator process (the real binary, its own state directory), N sites with certificates made by
# `fedtune pki` / `fedtune-site pki request`, each saying Hello, approved with `fedtune sites approve`, a run started
# with `fedtune run start` selecting the N sites (1 round, min_sites N), then N concurrent uploads of a valid fp32
# delta (upload_load, CoordinatorClient::UploadUpdate). The last accepted upload closes the round (aggregate,
# ApplyDelta, checkpoint written). The coordinator's VmHWM (peak RSS, /proc/PID/status) is read after start-up + run
# start and after the round closed. FedAvg aggregates as updates stream in, so the peak should grow with the model,
# not with N x model.
#
# Usage: tests/benchmarks/net/coordinator_memory.sh [BUILD_DIR]   (default build; needs BUILD_DIR/bin/fedtune,
#        fedtune-site, fedtune-coordinator and BUILD_DIR/benchmarks/upload_load)
# Environment: FEDTUNE_MEM_SITES (default "1 8 32"), FEDTUNE_MEM_ARCH (model init --arch; default resnext50_32x4d,
#        ~23 M float32 parameters, ~92 MB: 32 x 92 MB = 2.9 GB would still fit a 24 GiB machine if memory were
#        O(sites x model)), FEDTUNE_MEM_WORK (work directory; default a new one under /tmp, removed at the end),
#        FEDTUNE_BIN_DIR (the programs; default BUILD_DIR/bin), FEDTUNE_MEM_COORDINATOR_ENV (VAR=VALUE words set for
#        the coordinator process only, e.g. "MALLOC_ARENA_MAX=1" to see how much of the peak is glibc's per-thread
#        malloc arenas keeping freed memory; default none), FEDTUNE_MEM_AGGREGATION (the run's aggregation, e.g.
#        trimmed_mean or median, whose deltas spill to disk; default fedavg).
# VmHWM is also read right after start-up, before the run starts (the run start loads the global model).
# Besides VmHWM, the coordinator's RssAnon is sampled every 50 ms during the uploads (peak anonymous memory, i.e.
# without mapped files) and VmRSS is read once the round has closed (what stays resident).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
bin="${FEDTUNE_BIN_DIR:-$build/bin}"
load="$build/benchmarks/upload_load"
for p in "$bin/fedtune" "$bin/fedtune-site" "$bin/fedtune-coordinator" "$load"; do
  [[ -x "$p" ]] || { echo "coordinator_memory.sh: $p is missing (build it first)" >&2; exit 1; }
done
site_counts=(${FEDTUNE_MEM_SITES:-1 8 32})
arch="${FEDTUNE_MEM_ARCH:-resnext50_32x4d}"
max_sites=0
for n in "${site_counts[@]}"; do ((n > max_sites)) && max_sites=$n; done
keep_work=1
work="${FEDTUNE_MEM_WORK:-}"
if [[ -z "$work" ]]; then work="$(mktemp -d /tmp/fedtune_coordinator_memory_XXXXXX)"; keep_work=0; fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"
# The PKI, model and coordinator set-up shared with consortium_scale.sh.
source "$root/tests/benchmarks/net/bench_setup.bash"
cleanup() {
  local rc=$?
  bench_stop_coordinator
  [[ $keep_work -eq 0 ]] && rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
export FEDTUNE_LOG_LEVEL="${FEDTUNE_LOG_LEVEL:-1}"
cd "$work"

# PKI: the consortium CA, the coordinator's certificate, an operator, and max_sites site keys (made at the "site")
# with certificates signed by the operator.
bench_pki
all_sites=()
for ((i = 1; i <= max_sites; i++)); do
  id="$(printf 'site-%02d' "$i")"
  all_sites+=("$id")
  "$bin/fedtune-site" pki request --site-id "$id" --out "sites/$id" >/dev/null
  "$bin/fedtune" pki sign --csr "sites/$id/$id.csr" --role site --ca-dir ca --out "sites/$id/$id.pem" >/dev/null
done

bench_model "$arch" model.ckpt
read -r sha payload_bytes params < <("$load" delta --model model.ckpt --out delta.fp32)
model_bytes=$(stat -c %s model.ckpt)
echo "model: $arch, $params float parameters, checkpoint $(mb $((model_bytes / 1024))) MB; delta payload" \
  "$(mb $((payload_bytes / 1024))) MB (fp32); load: $(uptime | sed 's/.*load average/load average/')"

rows=()
for n in "${site_counts[@]}"; do
  state="state-$n"
  BENCH_COORDINATOR_ENV="${FEDTUNE_MEM_COORDINATOR_ENV:-}" bench_start_coordinator "$state" model.ckpt "$bin/fedtune-coordinator"
  address="$coordinator_address"
  sites=("${all_sites[@]:0:$n}")
  list="$(IFS=,; echo "${sites[*]}")"
  "$load" hello --address "$address" --ca "$FEDTUNE_CA" --sites-dir sites --sites "$list"
  for id in "${sites[@]}"; do "$bin/fedtune" sites approve "$id" >/dev/null; done
  {
    echo "name: \"memory $n\" rounds: 1 min_sites: $n round_deadline_seconds: 3600 final_evaluation: false"
    echo "aggregation: \"${FEDTUNE_MEM_AGGREGATION:-fedavg}\" trim_fraction: 0.2"
    for id in "${sites[@]}"; do echo "sites: \"$id\""; done
  } > "$state/run.textproto"
  started=$(kib VmHWM "$coordinator_pid")
  run_id="$("$bin/fedtune" run start --config "$state/run.textproto")"
  before=$(kib VmHWM "$coordinator_pid")
  start=$(date +%s.%N)
  (
    peak=0
    while kill -0 "$coordinator_pid" 2>/dev/null; do
      a=$(kib RssAnon "$coordinator_pid" 2>/dev/null || echo 0)
      ((a > peak)) && { peak=$a; echo "$peak" > "$state/rss_anon_peak"; }
      sleep 0.05
    done
  ) &
  sampler=$!
  "$load" upload --address "$address" --ca "$FEDTUNE_CA" --sites-dir sites --sites "$list" --run "$run_id" \
    --round 1 --payload delta.fp32 --sha256 "$sha" > "$state/upload.log"
  end=$(date +%s.%N)
  after=$(kib VmHWM "$coordinator_pid")
  rss_after=$(kib VmRSS "$coordinator_pid")
  sleep 0.2
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  anon_peak=$(cat "$state/rss_anon_peak" 2>/dev/null || echo 0)
  "$bin/fedtune" run status --run "$run_id" > "$state/status.txt" || true
  grep -q 'completed' "$state/status.txt" ||
    echo "warning: run $run_id of N=$n is not completed: $(head -3 "$state/status.txt")" >&2
  bench_stop_coordinator
  rm -rf "$state/state/spool" "$state/state/blobs"
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
  rows+=("$n $(mb "$started") $(mb "$before") $(mb "$after") $(mb "$anon_peak") $(mb "$rss_after") $secs")
  echo "N=$n: VmHWM after start + run start $(mb "$before") MB, after $n uploads + round close $(mb "$after") MB" \
    "($(tail -1 "$state/upload.log"))"
done

model_mb=$(mb $((payload_bytes / 1024)))
echo
echo "coordinator memory vs sites uploading at once; model (fp32 delta) = $model_mb MB;" \
  "coordinator env: ${FEDTUNE_MEM_COORDINATOR_ENV:-none}; aggregation: ${FEDTUNE_MEM_AGGREGATION:-fedavg}"
printf '%-6s %9s %15s %10s %11s %19s %15s %15s %10s %9s\n' sites "start MB" "start+run MB" "VmHWM MB" "VmHWM-start" \
  "(VmHWM-start)/model" "RssAnon peak MB" "VmRSS after MB" "N x model" "upload s"
for row in "${rows[@]}"; do
  read -r n started before after anon rss secs <<<"$row"
  printf '%-6s %9s %15s %10s %11s %19s %15s %15s %10s %9s\n' "$n" "$started" "$before" "$after" "$((after - before))" \
    "$(awk -v d=$((after - before)) -v m="$model_mb" 'BEGIN {printf "%.2f", d / m}')" "$anon" "$rss" \
    "$((n * model_mb))" "$secs"
done
echo "load after: $(uptime | sed 's/.*load average/load average/')"
