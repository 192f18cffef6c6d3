#!/usr/bin/env python3
"""Runs deploy/docker/init-consortium.sh (the docker-compose consortium's one-shot set-up) outside a container, with
the built programs on PATH and a temporary folder in place of the volumes, then checks it against
docker-compose.yml: every file that the coordinator's and the sites' configs name, seen through the service's
mounts, exists in the volume the script filled; private keys are 0600; the server certificate carries the name the
sites dial; each site certificate's CN is its site id; the open-source model is a readable checkpoint; and a second
run changes nothing. Usage: init_consortium_test.py REPO_ROOT BIN_DIR (exit 77: programs not built)."""
import hashlib
import os
import re
import ssl
import subprocess
import sys
import tempfile

import yaml

ROOT, BIN = sys.argv[1], sys.argv[2]
failures = []
checks = 0


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        failures.append(message)
    return bool(condition)


def decode_cert(path):
    return ssl._ssl._test_decode_cert(path)  # The stdlib's PEM decoder (subject, subjectAltName).


def main():
    for program in ("fedtune", "fedtune-site"):
        if not os.access(os.path.join(BIN, program), os.X_OK):
            print(f"skipped: {os.path.join(BIN, program)} is not built")
            return 77
    compose_dir = os.path.join(ROOT, "deploy", "docker")
    compose = yaml.safe_load(open(os.path.join(compose_dir, "docker-compose.yml")))
    services = compose["services"]
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), FEDTUNE_INIT_DIR=init,
                   FEDTUNE_IMAGES="30", FEDTUNE_IMAGE_SIZE="32", FEDTUNE_PRETRAIN_EPOCHS="1", FEDTUNE_LOG_LEVEL="1",
                   FEDTUNE_SITES=services["init"]["environment"]["FEDTUNE_SITES"], TMPDIR=tmp)
        script = os.path.join(compose_dir, "init-consortium.sh")
        r = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=600)
        if not check(r.returncode == 0, f"init-consortium.sh exit {r.returncode}: {r.stdout[-3000:]}"
                                        f"{r.stderr[-3000:]}"):
            return report()

        # Every path a service's config names exists where the service's mounts put it.
        for name, spec in services.items():
            if name in ("init", "operator"):
                continue
            mounts = {}
            for m in spec["volumes"]:
                src, dst = m.split(":")[:2]
                mounts[dst] = (os.path.normpath(os.path.join(compose_dir, src)) if src.startswith(".")
                               else os.path.join(init, src))
            config_path = spec["command"][spec["command"].index("--config") + 1]
            text = open(mounts[config_path]).read()
            for field, path in re.findall(r'^\s*(\w+):\s*"(/[^"]*)"', text, re.M):
                target = max((d for d in mounts if path == d or path.startswith(d + "/")), key=len, default=None)
                if not check(target, f"{name}: {field} {path} is under no mount"):
                    continue
                host = mounts[target] + path[len(target):]
                # state_dir / work_dir are created by the daemons inside their (filled) volume.
                must_exist = os.path.dirname(host) if field in ("state_dir", "work_dir") else host
                check(os.path.exists(must_exist), f"{name}: {field} {path} -> {host}: missing after init")
                if path.endswith(".key"):
                    check(os.stat(host).st_mode & 0o777 == 0o600, f"{name}: {host} is not mode 0600")
            if name.startswith("site-"):
                cert = decode_cert(os.path.join(init, f"{name}-pki", f"{name}.pem"))
                cn = [v for rdn in cert["subject"] for k, v in rdn if k == "commonName"]
                check(cn == [name], f"{name}: certificate CN {cn}")
                dial = re.search(r'^coordinator:\s*"([^":]+):', text, re.M)
                server = decode_cert(os.path.join(init, "coordinator-pki", "server.pem"))
                check(dial and ("DNS", dial.group(1)) in server.get("subjectAltName", ()),
                      f"{name}: dials {dial and dial.group(1)}, server SANs {server.get('subjectAltName')}")
        # The operator CLI's certificate, key and CA (environment of the operator service) exist in its volumes.
        operator = services["operator"]
        op_mounts = {m.split(":")[1]: os.path.join(init, m.split(":")[0]) for m in operator["volumes"]
                     if not m.startswith(".")}
        for key in ("FEDTUNE_CERT", "FEDTUNE_KEY", "FEDTUNE_CA"):
            path = operator["environment"][key]
            target = max((d for d in op_mounts if path.startswith(d + "/")), key=len, default=None)
            host = op_mounts[target] + path[len(target):] if target else None
            check(host and os.path.isfile(host), f"operator: {key} {path} -> {host}: missing after init")
        check(os.stat(os.path.join(init, "ca", "ca.key")).st_mode & 0o777 == 0o600, "ca.key is not 0600")
        model = os.path.join(init, "coordinator-state", "models", "open-source.ckpt")
        r = subprocess.run([os.path.join(BIN, "fedtune-site"), "model", "info", model], capture_output=True,
                           text=True)
        check(r.returncode == 0 and "member 0" in r.stdout, f"model info {model}: {r.stdout} {r.stderr}")

        before = hashlib.sha256(open(os.path.join(init, "ca", "ca.pem"), "rb").read()).hexdigest()
        r = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
        after = hashlib.sha256(open(os.path.join(init, "ca", "ca.pem"), "rb").read()).hexdigest()
        check(r.returncode == 0 and "already set up" in r.stdout and before == after,
              f"second run: exit {r.returncode}, {r.stdout.strip()} (CA changed: {before != after})")
    return report()


def report():
    for f in failures:
        print("FAIL", f)
    print(f"{checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
