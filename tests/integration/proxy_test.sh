#!/usr/bin/env bash
# HTTP CONNECT proxies with a real proxy (issue 12): Debian's tinyproxy, started here on 127.0.0.1 with a generated
# config, between a real site agent and a real coordinator; mTLS runs end to end through the tunnel (the agent's
# Hello is authenticated by its certificate and approved). Each case starts the agent, waits for its approval and
# counts the CONNECT requests in tinyproxy's log:
#   1. the site config's `proxy` field;
#   2. the https_proxy environment variable (no `proxy` field);
#   3. the `proxy` field wins over a grpc_proxy variable that points at a dead proxy;
#   4. no_proxy=127.0.0.1 bypasses the `proxy` field's proxy (no new CONNECT);
#   5. an https:// proxy URL is refused at start-up with exit status 2 and a message naming the field.
# Usage: proxy_test.sh REPO_ROOT BIN_DIR   (skipped, exit 0 with a note, when tinyproxy is not installed)
set -euo pipefail
root="$1" bin="$2"
tinyproxy="$(command -v tinyproxy || ls /usr/bin/tinyproxy /usr/sbin/tinyproxy 2>/dev/null | head -1 || true)"
if [[ -z "$tinyproxy" ]]; then
  echo "SKIP: tinyproxy is not installed (deploy/setup.sh installs it)"
  exit 0
fi
source "$root/tests/integration/lib.sh"
work_dir proxy
fail() { echo "FAIL: $*"; tail -n 20 "$work"/*.log; exit 1; }
unset grpc_proxy https_proxy http_proxy no_grpc_proxy no_proxy GRPC_PROXY HTTPS_PROXY HTTP_PROXY NO_PROXY
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cd "$work"

# A consortium with one site, 20 tiny images and a tiny initial model.
"$bin/fedtune" pki init --consortium "proxy test" --out ca >/dev/null
"$bin/fedtune" pki server --ca-dir ca --out pki --dns localhost --ip 127.0.0.1 >/dev/null
"$bin/fedtune-site" pki request --site-id site-a --out site >/dev/null
"$bin/fedtune" pki sign --csr site/site-a.csr --role site --ca-dir ca --out site/site-a.pem >/dev/null
"$bin/fedtune" synth --profile site-a --count 20 --size 32 --seed 1 --threads 1 --out data >/dev/null
"$bin/fedtune-site" model init --arch densenet_tiny --image-size 32 --seed 0 --out model.ckpt >/dev/null

cat > coordinator.textproto <<CFG
listen_address: "127.0.0.1:0"
port_file: "port"
server_cert: "pki/server.pem"
server_key: "pki/server.key"
ca_dir: "ca"
state_dir: "state"
initial_model: "model.ckpt"
auto_approve: true
CFG
"$bin/fedtune-coordinator" --config coordinator.textproto >coordinator.log 2>&1 &
pids+=($!)
for _ in $(seq 300); do [[ -s port ]] && break; sleep 0.1; done
[[ -s port ]] || fail "the coordinator did not start"
port="$(cat port)"

proxy_port="$(free_port)"
cat > tinyproxy.conf <<CFG
Port $proxy_port
Listen 127.0.0.1
Timeout 600
LogFile "$work/tinyproxy.log"
LogLevel Info
PidFile "$work/tinyproxy.pid"
MaxClients 20
Allow 127.0.0.1
ConnectPort $port
CFG
"$tinyproxy" -d -c tinyproxy.conf >tinyproxy.out 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  /usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1', $proxy_port), 1)" 2>/dev/null && break
  sleep 0.1
done
connects() { grep -c "CONNECT 127.0.0.1:$port" tinyproxy.log || true; }

# Starts the agent with the config's extra lines ($1) and environment (the rest), waits for its approval, stops it.
hello() {
  local extra="$1"
  shift
  cat > site.textproto <<CFG
site_id: "site-a"
coordinator: "127.0.0.1:$port"
site_cert: "site/site-a.pem"
site_key: "site/site-a.key"
ca_cert: "ca/ca.pem"
work_dir: "work"
min_backoff_ms: 200
max_backoff_ms: 2000
finetune { manifest: "data/manifest.csv" device: "cpu" threads: 1 loader_threads: 1 }
$extra
CFG
  : >agent.log
  env "$@" "$bin/fedtune-site" run --config site.textproto >agent.log 2>&1 &
  local agent=$!
  pids+=($agent)
  for _ in $(seq 300); do grep -q "site site-a approved by coordinator" agent.log && break; sleep 0.1; done
  kill -KILL "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  grep -q "site site-a approved by coordinator" agent.log || { cat agent.log; fail "the agent was not approved"; }
}
dead_proxy="http://127.0.0.1:$(free_port)"

before="$(connects)"
hello "proxy: \"http://127.0.0.1:$proxy_port\""
(( $(connects) > before )) || fail "case 1: no CONNECT through tinyproxy with the proxy field"
echo "ok   1. the proxy field: approved over mTLS through tinyproxy ($(( $(connects) - before )) CONNECT)"

before="$(connects)"
hello "" "https_proxy=http://127.0.0.1:$proxy_port"
(( $(connects) > before )) || fail "case 2: no CONNECT through tinyproxy with https_proxy"
echo "ok   2. https_proxy: approved through tinyproxy"

before="$(connects)"
hello "proxy: \"http://127.0.0.1:$proxy_port\"" "grpc_proxy=$dead_proxy"
(( $(connects) > before )) || fail "case 3: the proxy field did not take precedence over grpc_proxy"
echo "ok   3. the proxy field takes precedence over grpc_proxy (which points at a dead proxy)"

before="$(connects)"
hello "proxy: \"http://127.0.0.1:$proxy_port\"" "no_proxy=localhost,127.0.0.1"
(( $(connects) == before )) || fail "case 4: no_proxy did not bypass the proxy"
echo "ok   4. no_proxy=127.0.0.1: approved directly, no CONNECT"

cat > bad.textproto <<CFG
site_id: "site-a" coordinator: "127.0.0.1:$port" site_cert: "site/site-a.pem" site_key: "site/site-a.key"
ca_cert: "ca/ca.pem" work_dir: "work" finetune { manifest: "data/manifest.csv" }
proxy: "https://127.0.0.1:$proxy_port"
CFG
set +e
"$bin/fedtune-site" run --config bad.textproto >bad.log 2>&1
rc=$?
set -e
[[ $rc == 2 ]] || { cat bad.log; fail "case 5: exit status $rc, expected 2"; }
grep -q "config field 'proxy'" bad.log || { cat bad.log; fail "case 5: the message does not name the field"; }
echo "ok   5. an https:// proxy is refused: $(grep -o "config field 'proxy'.*" bad.log | head -1 | cut -c1-100)"
echo "1 passed, 0 failed"
