#!/usr/bin/env python3
"""The docker-compose consortium's file layout, run for real without Docker: init-consortium.sh fills a folder per
volume; then the coordinator, two site agents and the operator CLI each run as the image's user (uid 10001) in their
own mount namespace, where exactly the volumes and config files that deploy/docker/docker-compose.yml gives that
service are bind-mounted at the container paths (/etc/fedtune, /var/lib/fedtune, /srv/fedtune/data), "coordinator"
resolves to 127.0.0.1, and the coordinator runs under W^X (PR_SET_MDWE: what MemoryDenyWriteExecute=yes in
fedtune-coordinator.service enforces). A one-round run must complete and the operator must write the consortium
report into its own volume. This checks the paths, certificates (SANs, CNs), permissions and environment of the
compose file, the examples' layout and the W^X choice against the real programs.

Needs root, util-linux's unshare and setpriv, overlayfs (so that nothing is created on the host) and the built
fedtune, fedtune-coordinator and fedtune-site; otherwise exits 77 (skipped) with the reason.
Usage: compose_layout_test.py REPO_ROOT BIN_DIR"""
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import yaml

ROOT, BIN = sys.argv[1], sys.argv[2]
COMPOSE_DIR = os.path.join(ROOT, "deploy", "docker")
UID = 10001
RUN_CONFIG = """# proto-message: fedtune.v1.RunConfig
name: "compose layout test"
rounds: 1
min_sites: 2
sites: "site-a"
sites: "site-b"
round_deadline_seconds: 600
local_epochs: 1
learning_rate: 0.05
batch_size: 16
compression: "fp16"
final_evaluation: true
"""


def skip(reason):
    print("skipped:", reason)
    sys.exit(77)


def namespace_script(mounts, overlay_root, hosts, command, env):
    """A bash script: overlay /etc, /var/lib and /srv (mount points are created in the overlay, not on the host),
    bind the service's mounts, then run `command` as uid 10001."""
    lines = ["set -e"]
    for i, top in enumerate(("/etc", "/var/lib", "/srv")):
        upper, work = f"{overlay_root}/u{i}", f"{overlay_root}/w{i}"
        lines.append(f"mkdir -p {upper} {work} && mount -t overlay overlay "
                     f"-o lowerdir={top},upperdir={upper},workdir={work} {top}")
    lines.append(f"mount --bind {shlex.quote(hosts)} /etc/hosts")
    for src, dst in mounts:
        make = f"mkdir -p {shlex.quote(dst)}" if os.path.isdir(src) else \
            f"mkdir -p {shlex.quote(os.path.dirname(dst))} && touch {shlex.quote(dst)}"
        lines.append(f"{make} && mount --bind {shlex.quote(src)} {shlex.quote(dst)}")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    lines.append(f"exec env {exports} setpriv --reuid {UID} --regid {UID} --clear-groups "
                 + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines)


def service_mounts(spec, init, overrides):
    mounts = []
    for m in spec.get("volumes", []):
        src, dst = m.split(":")[:2]
        if dst in overrides:
            src = overrides[dst]
        elif src.startswith("."):
            src = os.path.normpath(os.path.join(COMPOSE_DIR, src))
        else:
            src = os.path.join(init, src)
            if not os.path.exists(src):  # A volume init does not fill: Docker creates it empty, owned by the user.
                os.makedirs(src)
                os.chown(src, UID, UID)
        mounts.append((src, dst))
    return mounts


def main():
    if os.geteuid() != 0:
        skip("needs root (mount namespaces and bind mounts)")
    for tool in ("unshare", "setpriv"):
        if not shutil.which(tool):
            skip(f"{tool} (util-linux) not found")
    programs = {p: os.path.join(BIN, p) for p in ("fedtune", "fedtune-site", "fedtune-coordinator")}
    for p, path in programs.items():
        if not os.access(path, os.X_OK):
            skip(f"{path} is not built")
    compose = yaml.safe_load(open(os.path.join(COMPOSE_DIR, "docker-compose.yml")))
    services = compose["services"]
    coordinator_config = open(os.path.join(COMPOSE_DIR, "compose", "coordinator.textproto")).read()
    port = int(coordinator_config.split('listen_address: "')[1].split('"')[0].rsplit(":", 1)[1])
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            skip(f"port {port} (the compose coordinator's listen_address) is in use")

    tmp = tempfile.mkdtemp(prefix="fedtune_compose_layout_")
    os.chmod(tmp, 0o755)
    processes = {}
    failures = []
    try:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                                namespace_script([], os.path.join(tmp, "probe"), "/etc/hosts", ["true"], {})],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            skip(f"mount namespace with overlayfs not available: {probe.stderr.strip()[-300:]}")
        init = os.path.join(tmp, "init")
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), FEDTUNE_INIT_DIR=init,
                   FEDTUNE_SITES="site-a site-b site-c", FEDTUNE_IMAGES="48", FEDTUNE_IMAGE_SIZE="32",
                   FEDTUNE_PRETRAIN_EPOCHS="1", FEDTUNE_LOG_LEVEL="1", TMPDIR=tmp)
        r = subprocess.run(["sh", os.path.join(COMPOSE_DIR, "init-consortium.sh")], env=env, capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:])
            print("0 passed, 1 failed: init-consortium.sh")
            return 1
        hosts = os.path.join(tmp, "hosts")
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost coordinator\n")
        run_config = os.path.join(tmp, "run.textproto")
        with open(run_config, "w") as f:
            f.write(RUN_CONFIG)
        os.chmod(run_config, 0o644)
        log_env = {"FEDTUNE_LOG_LEVEL": "1"}

        def start(name, command, extra_env=None, overrides=None):
            script = namespace_script(service_mounts(services[name], init, overrides or {}),
                                      os.path.join(tmp, "ns-" + name), hosts, command, {**log_env,
                                                                                         **(extra_env or {})})
            log = open(os.path.join(tmp, name + ".log"), "w")
            processes[name] = (subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                                                 script], stdout=log, stderr=subprocess.STDOUT), log)

        def operator(*args, timeout=60):
            op_env = {k: str(v) for k, v in services["operator"]["environment"].items()}
            script = namespace_script(service_mounts(services["operator"], init,
                                                     {"/etc/fedtune/run.textproto": run_config}),
                                      os.path.join(tmp, "ns-operator"), hosts, [programs["fedtune"]] + list(args),
                                      {**log_env, **op_env})
            return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                                  capture_output=True, text=True, timeout=timeout)

        # The coordinator under W^X when the kernel offers PR_SET_MDWE (Linux >= 6.3).
        wx = subprocess.run([sys.executable, "-c", "import ctypes,sys; l=ctypes.CDLL(None); "
                             "sys.exit(0 if l.prctl(65, 1, 0, 0, 0) == 0 else 1)"]).returncode == 0
        coordinator_cmd = services["coordinator"]["command"]
        coordinator_cmd = [programs["fedtune-coordinator"]] + coordinator_cmd[1:]
        if wx:
            coordinator_cmd = [sys.executable, "-c", "import ctypes, os, sys; l = ctypes.CDLL(None); "
                               "l.prctl(65, 1, 0, 0, 0) == 0 or sys.exit(3); os.execv(sys.argv[1], sys.argv[1:])"
                               ] + coordinator_cmd
        print("coordinator under W^X (PR_SET_MDWE):", "yes" if wx else "no (kernel < 6.3)")
        start("coordinator", coordinator_cmd)
        for site in ("site-a", "site-b"):
            start(site, [programs["fedtune-site"]] + services[site]["command"][1:])

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = operator("sites", "list")
            if listed.returncode == 0 and listed.stdout.count("approved") >= 2:
                break
            if any(p.poll() is not None for p, _ in processes.values()):
                break
            time.sleep(0.5)
        print(listed.stdout.strip())
        started = operator("run", "start", "--config", "/etc/fedtune/run.textproto")
        if started.returncode != 0:
            failures.append(f"run start: {started.stdout} {started.stderr}")
        else:
            watch = operator("run", "status", "--watch", "--interval", "1", timeout=480)
            print(watch.stdout.strip().split("\n\n")[0])
            if watch.returncode != 0:
                failures.append(f"run status --watch: exit {watch.returncode}: {watch.stdout[-2000:]}")
            report = operator("report", "--out", "/var/lib/fedtune/reports/layout-test")
            path = os.path.join(init, "operator-state", "reports", "layout-test", "report.json")
            if report.returncode != 0 or not os.path.isfile(path):
                failures.append(f"report: exit {report.returncode}: {report.stdout} {report.stderr}; {path}")
        for site in ("site-a", "site-b"):
            adapted = os.path.join(init, f"{site}-state", "site", "adapted")
            if not os.path.isdir(adapted):
                failures.append(f"{site}: no adapted/ in its work volume ({adapted})")
    finally:
        for name, (p, log) in processes.items():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()
        if failures:
            for name in processes:
                print(f"== {name}.log (tail)")
                print(open(os.path.join(tmp, name + ".log")).read()[-3000:])
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL", f)
    print(f"{1 if not failures else 0} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
