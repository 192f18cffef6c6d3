#!/usr/bin/env bash
# Structured logs (issue 15): the three programs with --log-format json write only JSON objects on stderr, one per
# line, with the keys time, level, program, site, run, round and message, and no glog file anywhere. A real
# coordinator (flag after its other flags), a real site agent (flag before its command) and the operator CLI
# (FEDTUNE_LOG_FORMAT=json in the environment) run a one-round federation of 20 tiny images on 127.0.0.1:
#   - every non-empty stderr line of every program is a JSON object with those keys and the right program name;
#   - the coordinator's lines about the site carry site "site-a" (its RPC handlers' context), and some carry the run
#     and round 1;
#   - the site agent's lines carry site "site-a", and some the run (SetLogSite / SetLogRun in the agent);
#   - the programs' own errors are JSON lines too (a bad command-line flag, a missing config file: exit 2), and a bad
#     --log-format value exits 2 naming it;
#   - --help of each program lists --log-format; TMPDIR (where glog would put its files) stays free of log files.
# Usage: json_logs_test.sh REPO_ROOT BIN_DIR
set -euo pipefail
root="$1" bin="$2"
source "$root/tests/integration/lib.sh"
work_dir json_logs
fail() { echo "FAIL: $*"; for f in "$work"/*.err; do echo "--- $f"; tail -n 5 "$f"; done; exit 1; }
cd "$work"
# glog's files would go to $TMPDIR (or /tmp): an empty folder of our own, checked at the end.
export TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
unset FEDTUNE_LOG_FORMAT FEDTUNE_LOG_LEVEL GLOG_log_dir GLOG_logtostderr

# checks FILE PROGRAM [MIN_LINES]: every non-empty line of FILE is a JSON object of the log format from PROGRAM.
checks() {
  /usr/bin/python3 - "$@" <<'PY'
import json, re, sys
path, program = sys.argv[1], sys.argv[2]
min_lines = int(sys.argv[3]) if len(sys.argv) > 3 else 1
keys = {"time": str, "level": str, "program": str, "site": str, "run": str, "round": int, "message": str}
count = 0
with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            obj = json.loads(line)
        except (UnicodeDecodeError, ValueError) as e:
            sys.exit(f"{path}:{number}: not a JSON line ({e}): {raw[:200]!r}")
        if not isinstance(obj, dict):
            sys.exit(f"{path}:{number}: not a JSON object: {line[:200]}")
        for key, kind in keys.items():
            if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
                sys.exit(f"{path}:{number}: key {key!r} missing or not {kind.__name__}: {line[:200]}")
        if obj["program"] != program:
            sys.exit(f"{path}:{number}: program {obj['program']!r}, expected {program!r}")
        if obj["level"] not in ("INFO", "WARNING", "ERROR", "FATAL"):
            sys.exit(f"{path}:{number}: level {obj['level']!r}")
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", obj["time"]):
            sys.exit(f"{path}:{number}: time {obj['time']!r} is not RFC 3339 UTC with microseconds")
        count += 1
if count < min_lines:
    sys.exit(f"{path}: {count} JSON line(s), expected at least {min_lines}")
print(f"ok   {path.split('/')[-1]}: {count} JSON line(s) from {program}")
PY
}
# field FILE KEY VALUE: how many lines of FILE have KEY == VALUE (a string; numbers compared as text).
count_with() {
  /usr/bin/python3 -c '
import json, sys
n = sum(1 for l in open(sys.argv[1], encoding="utf-8") if l.strip() and str(json.loads(l).get(sys.argv[2])) == sys.argv[3])
print(n)' "$@"
}

# ---- A consortium with one site, 20 tiny images and a tiny model; the CLI logs in JSON through the environment.
export FEDTUNE_LOG_FORMAT=json
"$bin/fedtune" pki init --consortium "json logs" --out ca >/dev/null 2>cli.err
"$bin/fedtune" pki server --ca-dir ca --out pki --dns localhost --ip 127.0.0.1 >/dev/null 2>>cli.err
"$bin/fedtune" pki request --name operator --out operator >/dev/null 2>>cli.err
"$bin/fedtune" pki sign --csr operator/operator.csr --role operator --ca-dir ca --out operator/operator.pem \
  >/dev/null 2>>cli.err
"$bin/fedtune-site" pki request --site-id site-a --out site >/dev/null 2>site-tools.err
"$bin/fedtune" pki sign --csr site/site-a.csr --role site --ca-dir ca --out site/site-a.pem >/dev/null 2>>cli.err
"$bin/fedtune" synth --profile site-a --count 20 --size 32 --seed 1 --threads 1 --out data >/dev/null 2>>cli.err
"$bin/fedtune-site" model init --arch densenet_tiny --image-size 32 --seed 0 --out model.ckpt >/dev/null \
  2>>site-tools.err
unset FEDTUNE_LOG_FORMAT

cat > coordinator.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "ca"
state_dir: "state"
initial_model: "model.ckpt"
task_wait_seconds: 2
auto_approve: true
CFG
"$bin/fedtune-coordinator" --config coordinator.textproto --log-format json >coordinator.out 2>coordinator.err &
coordinator_pid=$!
pids+=($coordinator_pid)
for _ in $(seq 300); do [[ -s port ]] && break; sleep 0.1; done
[[ -s port ]] || fail "the coordinator did not start"
port="$(cat port)"
export FEDTUNE_COORDINATOR="localhost:$port" FEDTUNE_CA="$work/ca/ca.pem"
export FEDTUNE_CERT="$work/operator/operator.pem" FEDTUNE_KEY="$work/operator/operator.key"

cat > site.textproto <<CFG
site_id: "site-a"
coordinator: "localhost:$port"
site_cert: "site/site-a.pem"
site_key: "site/site-a.key"
ca_cert: "ca/ca.pem"
work_dir: "site-work"
heartbeat_seconds: 1
min_backoff_ms: 200
max_backoff_ms: 2000
exit_after_runs: 1
finetune {
  manifest: "data/manifest.csv"
  device: "cpu" threads: 1 loader_threads: 1 seed: 1
  split { train: 0.6 validation: 0.2 test: 0.2 seed: 1 }
}
CFG
"$bin/fedtune-site" --log-format json run --config site.textproto >site.out 2>site.err &
site_pid=$!
pids+=($site_pid)
for _ in $(seq 600); do
  [[ "$("$bin/fedtune" sites list --log-format json 2>>cli.err)" == *approved* ]] && break
  sleep 0.1
done
[[ "$("$bin/fedtune" sites list 2>>cli.err)" == *approved* ]] || fail "site-a was not approved"

cat > run.textproto <<CFG
name: "json logs" rounds: 1 min_sites: 1 round_deadline_seconds: 300 local_epochs: 1 learning_rate: 0.05
batch_size: 8 sites: "site-a" final_evaluation: false
CFG
run_id="$("$bin/fedtune" --log-format json run start --config run.textproto 2>>cli.err)"
echo "run $run_id started"
"$bin/fedtune" run status --run "$run_id" --watch --interval 1 --log-format json >watch.out 2>>cli.err ||
  { tail -20 watch.out; fail "the run did not complete"; }
for _ in $(seq 300); do kill -0 "$site_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$site_pid" 2>/dev/null || fail "the site agent did not exit after its run (exit_after_runs: 1)"
site_rc=0
wait "$site_pid" || site_rc=$?
[[ $site_rc == 0 ]] || fail "the site agent exited with status $site_rc"
kill -TERM "$coordinator_pid"
coordinator_rc=0
wait "$coordinator_pid" || coordinator_rc=$?
[[ $coordinator_rc == 0 ]] || fail "the coordinator exited with status $coordinator_rc after SIGTERM"
echo "ok   run $run_id completed; the site agent and the coordinator (SIGTERM) exited 0"

# ---- Errors of the programs themselves, in JSON.
set +e
"$bin/fedtune" --log-format json run start --no-such-flag >bad_flag.out 2>bad_flag.err
rc_flag=$?
"$bin/fedtune-coordinator" --log-format json --config missing.textproto >missing.out 2>missing.err
rc_missing=$?
"$bin/fedtune-site" no-such-command --log-format json >bad_command.out 2>bad_command.err
rc_command=$?
"$bin/fedtune" --log-format xml sites list >bad_format.out 2>bad_format.err
rc_format=$?
FEDTUNE_LOG_FORMAT=yaml "$bin/fedtune-coordinator" --config coordinator.textproto >bad_env.out 2>bad_env.err
rc_env=$?
set -e
[[ $rc_flag == 2 ]] || fail "fedtune with an unknown flag exited $rc_flag, expected 2"
[[ $rc_missing == 2 ]] || fail "fedtune-coordinator with a missing config exited $rc_missing, expected 2"
[[ $rc_command == 2 ]] || fail "fedtune-site with an unknown command exited $rc_command, expected 2"
[[ $rc_format == 2 ]] || fail "fedtune --log-format xml exited $rc_format, expected 2"
[[ $rc_env == 2 ]] || fail "FEDTUNE_LOG_FORMAT=yaml exited $rc_env, expected 2"
grep -q 'unknown log format \\\?"xml\\\?"' bad_format.err || fail "the bad --log-format is not named: $(cat bad_format.err)"
grep -q 'FEDTUNE_LOG_FORMAT: unknown log format "yaml"' bad_env.err || fail "the bad variable is not named: $(cat bad_env.err)"
echo "ok   bad --log-format / FEDTUNE_LOG_FORMAT values: exit 2 naming them"

# ---- Every stderr line of every program is a JSON object of the format.
checks coordinator.err fedtune-coordinator 5
checks site.err fedtune-site 5
checks cli.err fedtune 0
checks site-tools.err fedtune-site 0
checks bad_flag.err fedtune 1
checks missing.err fedtune-coordinator 1
checks bad_command.err fedtune-site 1
[[ "$(count_with bad_flag.err level ERROR)" == 1 ]] || fail "fedtune's flag error is not one ERROR line"
grep -q 'unknown flag --no-such-flag' bad_flag.err || fail "fedtune's flag error does not name the flag"
grep -q 'missing.textproto' missing.err || fail "the coordinator's error does not name the file"
[[ ! -s bad_flag.out && ! -s bad_command.out ]] || fail "an error went to stdout"

# The context: the coordinator's lines about the site name it; the round's lines carry the run and round.
n_site="$(count_with coordinator.err site site-a)"
((n_site > 0)) || fail "no coordinator line has site \"site-a\""
n_run="$(count_with coordinator.err run "$run_id")"
((n_run > 0)) || fail "no coordinator line has run \"$run_id\""
echo "ok   coordinator: $n_site line(s) with site \"site-a\", $n_run with run \"$run_id\""
n_agent="$(count_with site.err site site-a)"
if ((n_agent > 0)); then
  echo "ok   site agent: $n_agent line(s) with site \"site-a\""
else
  fail "no site agent line has site \"site-a\" (SetLogSite)"
fi
n_agent_run="$(count_with site.err run "$run_id")"
if ((n_agent_run > 0)); then
  echo "ok   site agent: $n_agent_run line(s) with run \"$run_id\""
else
  fail "no site agent line has run \"$run_id\" (SetLogRun)"
fi

# ---- --help lists the flag; no glog file was written.
"$bin/fedtune" --help | grep -q -- '--log-format text|json' || fail "fedtune --help does not list --log-format"
"$bin/fedtune" run start --help | grep -q -- '--log-format' || fail "fedtune run start --help does not list --log-format"
"$bin/fedtune-site" --help | grep -q -- '--log-format text|json' || fail "fedtune-site --help does not list --log-format"
"$bin/fedtune-coordinator" --help | grep -q -- '--log-format text|json' ||
  fail "fedtune-coordinator --help does not list --log-format"
echo "ok   --help of the three programs lists --log-format"
logs="$(find "$TMPDIR" -name '*.INFO*' -o -name '*.WARNING*' -o -name '*.ERROR*' -o -name '*.FATAL*' -o -name '*.log.*')"
[[ -z "$logs" ]] || fail "glog files were written: $logs"
echo "ok   no glog file in TMPDIR"
echo "1 passed, 0 failed"
