#!/usr/bin/env bash
# The coordinator at consortium scale (issue 12): for N = 1, 16, 64 and 256 simulated sites, a fresh
# fedtune-coordinator process (its own state directory) with a SoloNet-sized model and `fedtune-loadgen` simulating N
# real sites (own certificates enrolled with the consortium CA, Hello, GetTask long-polls, heartbeats, downloads,
# uploads of valid fp32 deltas, metrics; no training). A FedAvg run of FEDTUNE_SCALE_ROUNDS rounds over every site is
# started with `fedtune run start` once all N are approved. Per N it prints the coordinator's peak RSS (VmHWM) after
# start-up + run start and at the end, the largest thread count seen (/proc/PID/status Threads, sampled every 100 ms),
# the first round's wall time (first task taken to last upload accepted) and the bytes the sites moved. Then the plain
# gRPC mTLS stream of upload_benchmark (BM_GrpcMtlsStream) with the same bytes as one delta and, in the same run, the
# coordinator's real upload path of a SoloNet delta (BM_CoordinatorUpload), for the ratio "coordinator upload, first
# byte to accepted / plain gRPC stream". Nothing is built: it uses BUILD_DIR/bin and
# BUILD_DIR/benchmarks/upload_benchmark.
#
# Usage: tests/benchmarks/net/consortium_scale.sh [BUILD_DIR]   (default build)
# Environment:
#   FEDTUNE_SCALE_SITES        site counts (default "1 16 64 256")
#   FEDTUNE_SCALE_ARCH         model (`fedtune-site model init --arch`; default solonet: DenseNet-121 + ResNeXt50-32x4d
#                              + MobileNetV2, ~32 M parameters, ~128 MB; resnext50_32x4d, ~92 MB, when memory is short)
#   FEDTUNE_SCALE_ROUNDS       rounds of the run (default 1)
#   FEDTUNE_SCALE_TRAIN_SECONDS  simulated training per round (default 2)
#   FEDTUNE_SCALE_COORDINATOR_BIN  the coordinator to measure (default BUILD_DIR/bin/fedtune-coordinator), e.g.
#                              /work/baseline/bin/fedtune-coordinator for a baseline side by side
#   FEDTUNE_SCALE_COORDINATOR_CONFIG  extra coordinator config lines, e.g. "max_server_threads: 600" for a baseline
#                              on gRPC's synchronous API (a thread per call; its default quota of 64 makes sites back
#                              off, and is reported), or "max_concurrent_decodes: 2"
#   FEDTUNE_SCALE_TIMEOUT      seconds per N before the loadgen gives up (default 1800)
#   FEDTUNE_SCALE_LOADGEN_ENV  VAR=VALUE words for the load generator's process only (e.g. MALLOC_ARENA_MAX=2)
#   FEDTUNE_SCALE_WORK         work directory (default a new one under /tmp, removed at the end)
#   FEDTUNE_BIN_DIR            the other programs (default BUILD_DIR/bin)
# Its last line reads:
#   consortium scale: rss growth 64 sites / model = X.XX, threads at 256 sites = N, upload vs plain grpc = X.XX
# where rss growth = (VmHWM with 64 sites - VmHWM after start-up and run start) / model bytes; "n/a" for a number
# whose N was not run (or failed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
bin="${FEDTUNE_BIN_DIR:-$build/bin}"
coordinator_bin="${FEDTUNE_SCALE_COORDINATOR_BIN:-$bin/fedtune-coordinator}"
upload_bench="$build/benchmarks/upload_benchmark"
for p in "$bin/fedtune" "$bin/fedtune-site" "$bin/fedtune-loadgen" "$coordinator_bin" "$upload_bench"; do
  [[ -x "$p" ]] || { echo "consortium_scale.sh: $p is missing (build it first)" >&2; exit 1; }
done
site_counts=(${FEDTUNE_SCALE_SITES:-1 16 64 256})
for n in "${site_counts[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "consortium_scale.sh: FEDTUNE_SCALE_SITES: '$n' is not a site count" >&2; exit 2; }
done
arch="${FEDTUNE_SCALE_ARCH:-solonet}"
rounds="${FEDTUNE_SCALE_ROUNDS:-1}"
train_seconds="${FEDTUNE_SCALE_TRAIN_SECONDS:-2}"
timeout_s="${FEDTUNE_SCALE_TIMEOUT:-1800}"
keep_work=1
work="${FEDTUNE_SCALE_WORK:-}"
if [[ -z "$work" ]]; then work="$(mktemp -d /tmp/fedtune_consortium_scale_XXXXXX)"; keep_work=0; fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"
source "$root/tests/benchmarks/net/bench_setup.bash"
loadgen_pid="" sampler_pid=""
cleanup() {
  local rc=$?
  [[ -n "$loadgen_pid" ]] && { kill -TERM "$loadgen_pid" 2>/dev/null || true; wait "$loadgen_pid" 2>/dev/null || true; }
  [[ -n "$sampler_pid" ]] && { kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; }
  bench_stop_coordinator
  [[ $keep_work -eq 0 ]] && rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
export FEDTUNE_LOG_LEVEL="${FEDTUNE_LOG_LEVEL:-1}"
cd "$work"

bench_pki
bench_model "$arch" model.ckpt
model_bytes=$(stat -c %s model.ckpt)
echo "model: $arch, checkpoint $(mb $((model_bytes / 1024))) MB; coordinator: $coordinator_bin;" \
  "extra config: ${FEDTUNE_SCALE_COORDINATOR_CONFIG:-none}; $rounds round(s), ${train_seconds} s simulated training;" \
  "$(nproc) cores, load: $(uptime | sed 's/.*load average/load average/')"

rows=()
declare -A growth threads_at single_rate payload_at
for n in "${site_counts[@]}"; do
  dir="n$n"
  bench_start_coordinator "$dir" model.ckpt "$coordinator_bin" "auto_approve: true
${FEDTUNE_SCALE_COORDINATOR_CONFIG:-}"
  # The simulated sites' certificates are made once (certs/) and reused for every N; each N has a fresh registry.
  env ${FEDTUNE_SCALE_LOADGEN_ENV:-} "$bin/fedtune-loadgen" --coordinator "$coordinator_address" --certs certs --ca-dir ca --work-dir "$dir/loadgen" \
    --sites "$n" --train-seconds "$train_seconds" --task-wait 10 --timeout "$timeout_s" \
    --ready-file "$dir/ready" >"$dir/loadgen.out" 2>"$dir/loadgen.log" &
  loadgen_pid=$!
  # The coordinator's thread count, sampled until it exits; the load generator's own peak RSS while it runs.
  (
    max=0
    while kill -0 "$coordinator_pid" 2>/dev/null; do
      t=$(kib Threads "$coordinator_pid" 2>/dev/null || echo 0)
      ((t > max)) && { max=$t; echo "$max" > "$dir/threads_max"; }
      l=$(kib VmHWM "$loadgen_pid" 2>/dev/null || true)
      [[ -n "$l" ]] && echo "$l" > "$dir/loadgen_hwm"
      sleep 0.1
    done
  ) &
  sampler_pid=$!
  while [[ ! -s "$dir/ready" ]] && kill -0 "$loadgen_pid" 2>/dev/null; do sleep 0.2; done
  status="ok"
  started=0
  if [[ -s "$dir/ready" ]]; then
    echo "name: \"consortium scale $n\" rounds: $rounds min_sites: $n round_deadline_seconds: $timeout_s" \
      "final_evaluation: false compression: \"fp32\"" > "$dir/run.textproto"
    # The operator's call competes with the sites' long-polls for the coordinator's threads: a few tries.
    for _ in $(seq 30); do
      if "$bin/fedtune" run start --config "$dir/run.textproto" >"$dir/run_id" 2>"$dir/run_start.err"; then
        started=1
        break
      fi
      grep -q -i "exhausted" "$dir/run_start.err" || break
      sleep 1
    done
    if ((started == 0)); then
      status="fedtune run start refused: $(tail -1 "$dir/run_start.err" | cut -c1-160)"
      grep -q -i "exhausted" "$dir/run_start.err" &&
        status="$status (the coordinator's thread quota, max_server_threads, is held by the sites' calls)"
      kill -TERM "$loadgen_pid" 2>/dev/null || true
    fi
  fi
  before=$(kib VmHWM "$coordinator_pid")
  rc=0
  wait "$loadgen_pid" || rc=$?
  loadgen_pid=""
  after=$(kib VmHWM "$coordinator_pid")
  # Calls the coordinator refused for lack of threads (its quota) or other limits, which the sites retried.
  busy=$(grep -c RESOURCE_EXHAUSTED "$dir/loadgen.log" || true)
  if ((rc != 0)) && [[ "$status" == ok ]]; then
    status="loadgen exit $rc: $(grep 'fedtune-loadgen: error' "$dir/loadgen.log" | tail -1 | cut -c1-200)"
    ((busy > 0)) && status="$status; $busy RESOURCE_EXHAUSTED answers (coordinator limits: see FEDTUNE_SCALE_COORDINATOR_CONFIG)"
  fi
  bench_stop_coordinator
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
  threads=$(cat "$dir/threads_max" 2>/dev/null || echo 0)
  loadgen_mb=$(mb "$(cat "$dir/loadgen_hwm" 2>/dev/null || echo 0)")
  # The loadgen's round table: round attempt tasks uploads dropped late refused cancelled MBdown MBup wall rate.
  read -r uploads mb_down mb_up wall rate < <(awk '$1 == 1 && $2 == 1 && NF == 12 {print $4, $9, $10, $11, $12}' \
    "$dir/loadgen.out" || true) || true
  payload=$(sed -n 's/.* payload \([0-9.]*\) MB per upload.*/\1/p' "$dir/loadgen.out")
  rows+=("$n|$(mb "$before")|$(mb "$after")|$threads|${wall:-n/a}|${uploads:-0}|${mb_down:-n/a}|${mb_up:-n/a}|${rate:-n/a}|$busy|$loadgen_mb|$status")
  if [[ "$status" == ok ]]; then
    growth[$n]=$(awk -v a="$after" -v b="$before" -v m="$model_bytes" 'BEGIN {printf "%.2f", (a - b) * 1024 / m}')
    threads_at[$n]=$threads
    single_rate[$n]="${rate:-}"
    payload_at[$n]="$payload"
  fi
  echo "N=$n: VmHWM start+run $(mb "$before") MB, end $(mb "$after") MB, threads max $threads, round 1 wall" \
    "${wall:-n/a} s, uploads ${uploads:-0}, MB down ${mb_down:-n/a}, MB up ${mb_up:-n/a}, upload ${rate:-n/a} MB/s;" \
    "$status"
  rm -rf "$dir/state/spool" "$dir/state/blobs" "$dir/loadgen"
done

# The plain gRPC mTLS client stream of the same bytes as one delta upload (fedtune-loadgen's payload), and, in the
# same process run, the coordinator's real upload path of a SoloNet delta (upload_benchmark: first byte to
# "accepted" with the round staying open, and the transfer alone: spooled, hashed and fsynced, then refused before
# decoding). The ratio is the coordinator's upload (to "accepted") over the plain stream. The loadgen's own single-site
# number is shown too: it also holds the round's close (its one site closes the round) and the process hops.
ratio="n/a" grpc_rate="n/a" coord_rate="n/a" transfer_rate="n/a"
if [[ -n "${payload_at[1]:-}" ]]; then
  bytes=$(awk -v m="${payload_at[1]}" 'BEGIN {printf "%.0f", m * 1e6}')
  FEDTUNE_UPLOAD_BENCH_BYTES="$bytes" "$upload_bench" \
    --benchmark_filter='BM_GrpcMtlsStream|BM_CoordinatorUpload/closes_round:[02]' \
    --benchmark_format=json >grpc.json 2>grpc.log
  read -r grpc_rate coord_rate transfer_rate < <(python3 -c '
import json, sys
rates = {b["name"]: b["bytes_per_second"] / 1e6 for b in json.load(open(sys.argv[1]))["benchmarks"]}
def pick(prefix):
    hits = [v for k, v in rates.items() if k.startswith(prefix)]
    return "%.1f" % hits[0] if hits else "n/a"
print(pick("BM_GrpcMtlsStream"), pick("BM_CoordinatorUpload/closes_round:0"), pick("BM_CoordinatorUpload/closes_round:2"))
' grpc.json)
  [[ "$coord_rate" != n/a ]] && ratio=$(awk -v a="$coord_rate" -v b="$grpc_rate" 'BEGIN {printf "%.2f", a / b}')
fi

echo
echo "coordinator at consortium scale; model $arch = $(mb $((model_bytes / 1024))) MB; coordinator $coordinator_bin"
printf '%-6s %12s %10s %9s %14s %8s %10s %10s %12s %9s %11s  %s\n' sites "start+run MB" "VmHWM MB" threads \
  "round 1 wall s" uploads "MB down" "MB up" "upload MB/s" "busy" "loadgen MB" status
for row in "${rows[@]}"; do
  IFS='|' read -r n before after threads wall uploads down up rate busy loadgen_mb status <<<"$row"
  printf '%-6s %12s %10s %9s %14s %8s %10s %10s %12s %9s %11s  %s\n' "$n" "$before" "$after" "$threads" "$wall" \
    "$uploads" "$down" "$up" "$rate" "$busy" "$loadgen_mb" "$status"
done
echo "(VmHWM of the coordinator; busy: RESOURCE_EXHAUSTED answers the sites retried; upload MB/s: per upload," \
  "GetUploadOffset + stream + accepted; loadgen MB: the load generator's own peak RSS)"
echo "plain gRPC mTLS stream of ${payload_at[1]:-n/a} MB: $grpc_rate MB/s; the coordinator's upload of a SoloNet" \
  "delta, first byte to accepted (round stays open): $coord_rate MB/s; its transfer alone (spooled, hashed, fsynced):" \
  "$transfer_rate MB/s; single-site loadgen upload (with the round's close): ${single_rate[1]:-n/a} MB/s"
echo "load after: $(uptime | sed 's/.*load average/load average/')"
echo "consortium scale: rss growth 64 sites / model = ${growth[64]:-n/a}, threads at 256 sites =" \
  "${threads_at[256]:-n/a}, upload vs plain grpc = $ratio"
