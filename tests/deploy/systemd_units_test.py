#!/usr/bin/env python3
"""Checks the systemd units in deploy/systemd/.

With systemd-analyze (systemd >= 252): `systemd-analyze verify` in a scratch root (stub programs at the ExecStart
paths, the distribution's targets) must print nothing, and `systemd-analyze security --offline` must rate each unit's
exposure at 2.5 or below. Without it: every key must be one of the keys this project uses (a typo is an error).
Always: the hardening, restart and directory settings the deployment relies on, and that the unit's paths agree with
deploy/examples/ and deploy/systemd/fedtune.sysusers.conf. Usage: systemd_units_test.py REPO_ROOT"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Keys allowed when systemd-analyze is not available to check them (per section).
KNOWN_KEYS = {
    "Unit": {"Description", "Documentation", "After", "Wants", "Requires", "StartLimitIntervalSec", "StartLimitBurst"},
    "Service": {
        "Type", "User", "Group", "ExecStart", "ExecStartPre", "Restart", "RestartSec", "TimeoutStopSec", "KillMode",
        "ConfigurationDirectory", "StateDirectory", "StateDirectoryMode", "UMask", "ReadWritePaths", "ReadOnlyPaths",
        "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem", "ProtectHome",
        "PrivateTmp", "PrivateDevices", "PrivateUsers", "PrivateMounts", "ProtectHostname", "ProtectClock",
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
        "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "RemoveIPC",
        "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
        "RestrictAddressFamilies", "DevicePolicy", "DeviceAllow", "LimitNOFILE", "Environment", "IPAddressDeny",
        "IPAddressAllow", "CPUWeight", "IOWeight", "MemoryMax",
    },
    "Install": {"WantedBy"},
}

# Settings every unit must have (key -> required value; None: present with any value, "" : present and empty).
REQUIRED = {
    "User": "fedtune", "Group": "fedtune", "Type": "exec", "Restart": "on-failure", "RestartSec": None,
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "SystemCallArchitectures": "native", "ConfigurationDirectory": "fedtune", "StateDirectory": None,
    "MemoryDenyWriteExecute": None, "RestrictAddressFamilies": None,
}
REQUIRED_UNIT = {"StartLimitIntervalSec": None, "StartLimitBurst": None, "After": None}

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def parse_unit(path):
    """Returns {section: [(key, value, line_number)]}; continuation lines are joined."""
    sections = {}
    section = None
    pending = ""
    start = 0
    for number, raw in enumerate(open(path), 1):
        line = raw.rstrip("\n")
        if not pending and (not line.strip() or line.lstrip().startswith(("#", ";"))):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        m = re.fullmatch(r"\[(\w+)\]", line.strip())
        if m:
            section = m.group(1)
            sections.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        if not check(sep and section, f"{path}:{start}: not a key=value line in a section: {line!r}"):
            continue
        sections[section].append((key.strip(), value.strip(), start))
    return sections


def values(sections, section, key):
    return [v for k, v, _ in sections.get(section, []) if k == key]


def exec_programs(sections):
    programs = []
    for key in ("ExecStart", "ExecStartPre"):
        for value in values(sections, "Service", key):
            programs.append(value.lstrip("+-@:!").split()[0])
    return programs


def verify_with_systemd(units):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        print("systemd-analyze not found: skipping `systemd-analyze verify` and `security`; checking keys against "
              "the list of known keys instead")
        return False
    system_dir = next((d for d in ("/usr/lib/systemd/system", "/lib/systemd/system")
                       if os.path.exists(os.path.join(d, "multi-user.target"))), None)
    if not system_dir:
        print("no systemd unit directory with multi-user.target: skipping systemd-analyze; checking keys instead")
        return False
    with tempfile.TemporaryDirectory() as root:
        shutil.copytree(system_dir, os.path.join(root, "usr/lib/systemd/system"), symlinks=True)
        unit_dir = os.path.join(root, "etc/systemd/system")
        os.makedirs(unit_dir)
        for path, sections in units.items():
            shutil.copy(path, unit_dir)
            for program in exec_programs(sections):
                stub = os.path.join(root, program.lstrip("/"))
                os.makedirs(os.path.dirname(stub), exist_ok=True)
                with open(stub, "w") as f:
                    f.write("#!/bin/sh\n")
                os.chmod(stub, 0o755)
        for path in units:
            name = os.path.basename(path)
            r = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", name], capture_output=True,
                               text=True)
            output = (r.stdout + r.stderr).strip()
            check(r.returncode == 0 and not output,
                  f"systemd-analyze verify {name}: exit {r.returncode}: {output or '(no output)'}")
            r = subprocess.run([analyze, "security", "--offline=true", f"--root={root}", "--threshold=25", name],
                               capture_output=True, text=True)
            m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
            level = m.group(1) if m else "?"
            print(f"{name}: systemd-analyze verify clean; security exposure {level} (10 = unprotected)")
            check(r.returncode == 0 and m, f"systemd-analyze security {name}: exposure {level} above 2.5 or failed: "
                                           f"{(r.stdout + r.stderr)[-500:]}")
    return True


def check_unit(path, sections, verified):
    name = os.path.basename(path)
    check(set(sections) == {"Unit", "Service", "Install"}, f"{name}: sections {sorted(sections)}")
    if not verified:
        for section, entries in sections.items():
            for key, _, line in entries:
                check(key in KNOWN_KEYS.get(section, set()), f"{name}:{line}: unknown key [{section}] {key}")
    for key, expected in REQUIRED.items():
        got = values(sections, "Service", key)
        if check(got, f"{name}: [Service] {key}= missing"):
            check(expected is None or got[-1] == expected, f"{name}: {key}={got[-1]!r}, expected {expected!r}")
    for key, expected in REQUIRED_UNIT.items():
        check(values(sections, "Unit", key), f"{name}: [Unit] {key}= missing")
    filters = " ".join(values(sections, "Service", "SystemCallFilter"))
    check("@system-service" in filters, f"{name}: SystemCallFilter lacks @system-service")
    check("~@privileged" in filters, f"{name}: SystemCallFilter does not deny @privileged")
    check(values(sections, "Install", "WantedBy") == ["multi-user.target"], f"{name}: WantedBy")
    families = " ".join(values(sections, "Service", "RestrictAddressFamilies")).split()
    check(set(families) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"} and "AF_INET" in families,
          f"{name}: RestrictAddressFamilies={families}")
    # Config path: /etc/<ConfigurationDirectory>/<file> named by --config.
    exec_start = values(sections, "Service", "ExecStart")
    m = re.search(r"--config\s+(\S+)", exec_start[0] if exec_start else "")
    config = m.group(1) if m else ""
    check(config.startswith("/etc/fedtune/"), f"{name}: ExecStart --config {config!r} outside /etc/fedtune/")
    return config


def main():
    root = sys.argv[1]
    unit_dir = os.path.join(root, "deploy", "systemd")
    paths = sorted(os.path.join(unit_dir, f) for f in os.listdir(unit_dir) if f.endswith(".service"))
    check([os.path.basename(p) for p in paths] == ["fedtune-coordinator.service", "fedtune-site.service"],
          f"units: {paths}")
    units = {p: parse_unit(p) for p in paths}
    verified = verify_with_systemd(units)
    examples = os.path.join(root, "deploy", "examples")
    expect = {  # unit -> (example config, field naming the state directory, StateDirectory, program)
        "fedtune-coordinator.service": ("coordinator.textproto", "state_dir", "fedtune/coordinator",
                                        "/usr/local/bin/fedtune-coordinator"),
        "fedtune-site.service": ("site.textproto", "work_dir", "fedtune/site", "/usr/local/bin/fedtune-site"),
    }
    for path, sections in units.items():
        name = os.path.basename(path)
        config = check_unit(path, sections, verified)
        if name not in expect:
            continue
        example, state_field, state_dir, program = expect[name]
        check(os.path.basename(config) == example, f"{name}: --config {config} is not named like deploy/examples/"
                                                    f"{example}")
        check(exec_programs(sections)[-1] == program, f"{name}: ExecStart program {exec_programs(sections)}")
        check(values(sections, "Service", "StateDirectory") == [state_dir], f"{name}: StateDirectory")
        text = open(os.path.join(examples, example)).read()
        m = re.search(rf'^{state_field}:\s*"([^"]*)"', text, re.M)
        check(m and m.group(1) == f"/var/lib/{state_dir}",
              f"{name}: {example} {state_field} {m and m.group(1)!r} != /var/lib/{state_dir} (StateDirectory=)")
        # Every absolute path of the example lies in the unit's directories or a read-only data location.
        for p in re.findall(r'^\s*\w+:\s*"(/[^"]*)"', text, re.M):
            check(p.startswith(("/etc/fedtune/", "/var/lib/fedtune/", "/srv/fedtune/")),
                  f"{name}: {example} path {p} outside /etc/fedtune, /var/lib/fedtune, /srv/fedtune")
    site = units[os.path.join(unit_dir, "fedtune-site.service")]
    check(values(site, "Service", "DevicePolicy") == ["closed"], "fedtune-site: DevicePolicy=closed")
    check(any("nvidia" in v for v in values(site, "Service", "DeviceAllow")), "fedtune-site: no NVIDIA DeviceAllow")
    check(values(site, "Service", "MemoryDenyWriteExecute") == ["no"],
          "fedtune-site: LibTorch's oneDNN JIT needs MemoryDenyWriteExecute=no")
    check(not values(site, "Service", "PrivateDevices") or values(site, "Service", "PrivateDevices") == ["no"],
          "fedtune-site: PrivateDevices= would hide the GPUs")
    coordinator = units[os.path.join(unit_dir, "fedtune-coordinator.service")]
    check(values(coordinator, "Service", "PrivateDevices") == ["yes"], "fedtune-coordinator: PrivateDevices=yes")
    check(values(coordinator, "Service", "MemoryDenyWriteExecute") == ["yes"],
          "fedtune-coordinator: MemoryDenyWriteExecute=yes (see tests/deploy/wx_probe.py)")
    sysusers = open(os.path.join(unit_dir, "fedtune.sysusers.conf")).read()
    check(re.search(r"^u\s+fedtune\s", sysusers, re.M), "fedtune.sysusers.conf does not define user fedtune")

    for f in failures:
        print("FAIL", f)
    print(f"{len(units)} units checked: {0 if failures else len(units)} passed, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
