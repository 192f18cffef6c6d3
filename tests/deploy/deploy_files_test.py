#!/usr/bin/env python3
"""Checks the deployment files that no engine runs here (no Docker engine, no Kubernetes cluster on the development
machines), by reading them:

* every YAML file under deploy/ parses;
* docker-compose.yml: services, volumes and networks reference each other consistently; every bind-mounted file and
  build file exists; the init service fills every volume the coordinator and sites mount; each service's config parses
  (textproto_check) and every absolute path in it lies under one of the service's mounts; the sites dial the
  coordinator's service name and port, and so does the operator CLI's environment;
* deploy/k8s/: the coordinator has a StatefulSet (one replica, a volume claim for its state), a Service selecting it,
  a headless Service named by serviceName, Secrets and a ConfigMap; the site agent a Deployment asking for one
  nvidia.com/gpu, a Secret, a PersistentVolumeClaim and no Service; every volume, mount, subPath and config path
  resolves; pods run as the image's non-root uid;
* the Dockerfiles: stages (builder, runtime last) on Debian 12, every COPY source exists in the repository (or names
  an earlier stage / a documented build context), a non-root USER, the volumes; the package list they extract from
  deploy/setup.sh with sed is the one setup.sh installs; every build target they name is defined in a CMakeLists.txt;
* textproto_check itself refuses an unknown field, a wrong default and an undocumented field (so the example checks
  can fail).
* deploy/docker/runtime-packages.sh, on the built programs when BIN_DIR has them: every package it names is installed
  and provides what they load (LibTorch among them).
Usage: deploy_files_test.py REPO_ROOT TEXTPROTO_CHECK [BIN_DIR]"""
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    print("FAIL: python3-yaml is missing (Debian package python3-yaml; python3-torch depends on it)")
    sys.exit(1)

ROOT = sys.argv[1]
TEXTPROTO_CHECK = sys.argv[2]
BIN = sys.argv[3] if len(sys.argv) > 3 else None
DEPLOY = os.path.join(ROOT, "deploy")
failures = []
checks = 0


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        failures.append(message)
    return bool(condition)


def rel(path):
    return os.path.relpath(path, ROOT)


def textproto_ok(text, label):
    """Parses a config with textproto_check; returns True when it passed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, re.sub(r"[^\w.-]", "_", label) + ".textproto")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([TEXTPROTO_CHECK, path], capture_output=True, text=True)
        return check(r.returncode == 0, f"{label}: textproto_check: {r.stdout.strip()} {r.stderr.strip()}")


def config_paths(text):
    """Absolute paths in a text-format config: {field: path}."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*(\w+):\s*"(/[^"]*)"', text, re.M)}


def under(path, mounts):
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


# ---------------------------------------------------------------------------------------------------------------
def check_yaml_files():
    docs = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True)):
        try:
            loaded = [d for d in yaml.safe_load_all(open(path)) if d is not None]
            check(loaded, f"{rel(path)}: no YAML document")
            docs[path] = loaded
        except yaml.YAMLError as e:
            check(False, f"{rel(path)}: YAML error: {e}")
    check(len(docs) >= 3, f"expected docker-compose.yml and two Kubernetes manifests, found {sorted(docs)}")
    return docs


# ---------------------------------------------------------------------------------------------------------------
def parse_mount(spec):
    """'src:dst[:ro]' -> (src, dst, read_only)."""
    parts = spec.split(":")
    return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def check_compose(path, compose):
    base = os.path.dirname(path)
    name = rel(path)
    services = compose.get("services", {})
    volumes = set((compose.get("volumes") or {}).keys())
    networks = set((compose.get("networks") or {}).keys())
    check({"init", "coordinator", "operator"} <= set(services), f"{name}: services {sorted(services)}")
    sites = sorted(s for s in services if s.startswith("site-"))
    check(len(sites) == 3, f"{name}: expected three site services, found {sites}")

    used = set()
    mounts = {}
    for service, spec in services.items():
        check(spec.get("image") or spec.get("build"), f"{name}: service {service} has neither image nor build")
        build = spec.get("build")
        if build:
            context = os.path.normpath(os.path.join(base, build.get("context", ".")))
            check(os.path.isdir(context), f"{name}: {service}: build context {context} missing")
            check(os.path.isfile(os.path.join(context, build.get("dockerfile", "Dockerfile"))),
                  f"{name}: {service}: dockerfile {build.get('dockerfile')} missing")
        for dep in spec.get("depends_on", {}) or {}:
            check(dep in services, f"{name}: {service} depends on unknown service {dep}")
        for net in spec.get("networks", []) or []:
            check(net in networks, f"{name}: {service} uses undeclared network {net}")
        mounts[service] = []
        for m in spec.get("volumes", []) or []:
            src, dst, ro = parse_mount(m)
            mounts[service].append((src, dst, ro))
            if src.startswith((".", "/")):
                check(os.path.exists(os.path.normpath(os.path.join(base, src))),
                      f"{name}: {service}: bind-mount source {src} missing")
            else:
                check(src in volumes, f"{name}: {service}: volume {src} not declared under volumes:")
                used.add(src)
    check(volumes == used, f"{name}: declared but unused volumes: {sorted(volumes - used)}")

    # The init service fills every named volume the coordinator and the sites mount, at /init/<volume>.
    init_targets = {src: dst for src, dst, _ in mounts["init"]}
    for service in ["coordinator"] + sites:
        for src, dst, ro in mounts[service]:
            if not src.startswith((".", "/")):
                check(init_targets.get(src) == f"/init/{src}", f"{name}: init does not mount {src} at /init/{src}")
    env_sites = (services["init"].get("environment") or {}).get("FEDTUNE_SITES", "")
    check(env_sites.split() == sites, f"{name}: init FEDTUNE_SITES {env_sites!r} != site services {sites}")
    init_script = os.path.join(DEPLOY, "docker", "init-consortium.sh")
    check(os.path.isfile(init_script), "deploy/docker/init-consortium.sh missing")
    check(services["init"].get("command", [""])[0].endswith("/init-consortium.sh"), f"{name}: init command")

    # Each service's config: mounted where --config says, parses, and its absolute paths lie under its mounts.
    listen_port = None
    for service in ["coordinator"] + sites:
        command = services[service].get("command", [])
        config_target = command[command.index("--config") + 1] if "--config" in command else None
        source = next((s for s, d, _ in mounts[service] if d == config_target), None)
        if not check(source and source.startswith("."), f"{name}: {service}: --config {config_target} not mounted"):
            continue
        text = open(os.path.normpath(os.path.join(base, source))).read()
        textproto_ok(text, f"{name}:{service}")
        targets = [d for _, d, _ in mounts[service]] + ["/tmp"]
        for field, p in config_paths(text).items():
            check(under(p, targets), f"{name}: {service}: {field} {p} is under none of its mounts {targets}")
        if service == "coordinator":
            m = re.search(r'^listen_address:\s*"[^"]*:(\d+)"', text, re.M)
            listen_port = m and m.group(1)
            ports = [str(p).split(":")[-1] for p in services[service].get("ports", [])]
            check(listen_port in ports, f"{name}: coordinator listens on {listen_port}, publishes {ports}")
        else:
            check(re.search(rf'^site_id:\s*"{service}"', text, re.M), f"{name}: {service}: site_id differs")
            check(re.search(rf'^coordinator:\s*"coordinator:{listen_port}"', text, re.M),
                  f"{name}: {service}: does not dial coordinator:{listen_port}")
            check(not services[service].get("ports"), f"{name}: {service} publishes a port; sites only dial out")
            # A site sees only its own volumes.
            for src, _, _ in mounts[service]:
                if not src.startswith("."):
                    check(src.startswith(service + "-"), f"{name}: {service} mounts another party's volume {src}")
            data = [d for s, d, ro in mounts[service] if s == f"{service}-data"]
            check(data and all(ro for s, _, ro in mounts[service] if s == f"{service}-data"),
                  f"{name}: {service}: must mount its own data volume {service}-data, read-only")
    check("ca" not in [s for site in sites for s, _, _ in mounts[site]], f"{name}: a site mounts the CA volume")
    # The operator CLI's connection settings (environment) point into its own mounts and at the coordinator.
    op_env = services["operator"].get("environment") or {}
    op_targets = [d for _, d, _ in mounts["operator"]]
    for key in ("FEDTUNE_CERT", "FEDTUNE_KEY", "FEDTUNE_CA"):
        check(under(str(op_env.get(key, "")), op_targets), f"{name}: operator {key} {op_env.get(key)} is under none "
                                                           f"of its mounts {op_targets}")
    check(op_env.get("FEDTUNE_COORDINATOR") == f"coordinator:{listen_port}",
          f"{name}: operator FEDTUNE_COORDINATOR {op_env.get('FEDTUNE_COORDINATOR')} != coordinator:{listen_port}")


# ---------------------------------------------------------------------------------------------------------------
def pod_specs(doc):
    if doc.get("kind") in ("StatefulSet", "Deployment"):
        return [doc["spec"]["template"]["spec"]]
    return []


def check_k8s(path, docs, uid):
    name = rel(path)
    by_kind = {}
    for d in docs:
        check(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"),
              f"{name}: a document lacks apiVersion/kind/metadata.name")
        by_kind.setdefault(d["kind"], []).append(d)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    check(len(namespaces) == 1 and None not in namespaces, f"{name}: namespaces {namespaces}")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    data_keys = {(d["kind"], d["metadata"]["name"]): set((d.get("data") or {}).keys()) |
                 set((d.get("stringData") or {}).keys()) for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
    check(len(workloads) == 1, f"{name}: expected one workload, found {len(workloads)}")
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        check(w["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector/labels differ")
        check(w["spec"].get("replicas") == 1, f"{name}: {w['kind']} replicas must be 1")
        pod = w["spec"]["template"]["spec"]
        sc = pod.get("securityContext", {})
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == uid and sc.get("fsGroup") == uid,
              f"{name}: pod securityContext {sc} (expected the image's uid {uid}, non-root)")
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        volumes = {}
        for v in pod.get("volumes", []):
            volumes[v["name"]] = v
            if "configMap" in v:
                check(("ConfigMap", v["configMap"]["name"]) in names, f"{name}: ConfigMap {v['configMap']} missing")
            if "secret" in v:
                check(("Secret", v["secret"]["secretName"]) in names, f"{name}: Secret {v['secret']} missing")
            if "persistentVolumeClaim" in v:
                check(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names,
                      f"{name}: PVC {v['persistentVolumeClaim']} missing")
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            csc = c.get("securityContext", {})
            check(csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True and
                  csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: {c['name']}: securityContext {csc}")
            mount_dirs = []
            files = {}
            for m in c.get("volumeMounts", []):
                if not check(m["name"] in volumes or m["name"] in claims,
                             f"{name}: {c['name']}: mount of unknown volume {m['name']}"):
                    continue
                mount_dirs.append(m["mountPath"])
                v = volumes.get(m["name"], {})
                source = (("ConfigMap", v["configMap"]["name"]) if "configMap" in v else
                          ("Secret", v["secret"]["secretName"]) if "secret" in v else None)
                if "subPath" in m and source:
                    check(m["subPath"] in data_keys.get(source, set()),
                          f"{name}: {c['name']}: subPath {m['subPath']} not a key of {source}")
                    files[m["mountPath"]] = source, m["subPath"]
                elif source:
                    for key in data_keys.get(source, set()):
                        files[m["mountPath"].rstrip("/") + "/" + key] = source, key
            command = c.get("command", [])
            if "--config" not in command:
                continue
            config = command[command.index("--config") + 1]
            if not check(config in files and files[config][0][0] == "ConfigMap",
                         f"{name}: {c['name']}: --config {config} is not a mounted ConfigMap key"):
                continue
            cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == files[config][0][1])
            text = cm["data"][files[config][1]]
            textproto_ok(text, f"{name}:{cm['metadata']['name']}")
            secret_dirs = {os.path.dirname(p) for p, (src, _) in files.items() if src[0] == "Secret"}
            for field, p in config_paths(text).items():
                check(under(p, mount_dirs), f"{name}: config {field} {p} is under none of the mounts {mount_dirs}")
                if os.path.dirname(p) in secret_dirs:
                    check(p in files, f"{name}: config {field} {p} is not a key of the Secret mounted there")
                if field == "ca_dir":  # What the coordinator reads from the CA folder.
                    for f in ("ca.pem", "crl.pem", "index.json"):
                        check(f"{p}/{f}" in files, f"{name}: ca_dir {p} lacks {f} (a key of the Secret mounted there)")
            for port in c.get("ports", []):
                check(port.get("name") and port.get("containerPort"), f"{name}: {c['name']}: port {port}")
    return by_kind, workloads


def check_k8s_manifests(docs, uid):
    coordinator_path = os.path.join(DEPLOY, "k8s", "coordinator.yaml")
    site_path = os.path.join(DEPLOY, "k8s", "site-agent.yaml")
    for p in (coordinator_path, site_path):
        if not check(p in docs, f"{rel(p)} missing"):
            return
    kinds, workloads = check_k8s(coordinator_path, docs[coordinator_path], uid)
    check({"StatefulSet", "Service", "Secret", "ConfigMap"} <= set(kinds), f"coordinator.yaml kinds {sorted(kinds)}")
    sts = kinds.get("StatefulSet", [None])[0]
    if sts:
        templates = sts["spec"].get("volumeClaimTemplates", [])
        check(templates, "coordinator.yaml: StatefulSet without volumeClaimTemplates (SQLite and blobs)")
        state_mounts = [m["mountPath"] for c in sts["spec"]["template"]["spec"]["containers"]
                        for m in c["volumeMounts"] if m["name"] in {t["metadata"]["name"] for t in templates}]
        check("/var/lib/fedtune" in state_mounts, f"coordinator.yaml: state claim mounted at {state_mounts}")
        labels = sts["spec"]["template"]["metadata"]["labels"]
        services = kinds.get("Service", [])
        ports = {p["name"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for svc in services:
            check(svc["spec"]["selector"].items() <= labels.items(), f"coordinator.yaml: Service "
                                                                      f"{svc['metadata']['name']} selects no pod")
            for p in svc["spec"]["ports"]:
                check(p.get("targetPort") in ports, f"coordinator.yaml: Service port {p} targets no container port")
        headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
        check(any(s["metadata"]["name"] == sts["spec"]["serviceName"] for s in headless),
              "coordinator.yaml: serviceName names no headless Service")
        check(any(s["spec"].get("type") in ("LoadBalancer", "NodePort") for s in services),
              "coordinator.yaml: no Service reachable from the hospitals (LoadBalancer or NodePort)")

    kinds, workloads = check_k8s(site_path, docs[site_path], uid)
    check({"Deployment", "Secret", "ConfigMap", "PersistentVolumeClaim"} <= set(kinds),
          f"site-agent.yaml kinds {sorted(kinds)}")
    check("Service" not in kinds, "site-agent.yaml: a site agent accepts no connections and has no Service")
    for d in kinds.get("Deployment", []):
        gpus = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in
                d["spec"]["template"]["spec"]["containers"]]
        check(gpus == [1], f"site-agent.yaml: nvidia.com/gpu limits {gpus}, expected one container asking for 1")
    policies = kinds.get("NetworkPolicy", [])
    check(any("Ingress" in p["spec"].get("policyTypes", []) and not p["spec"].get("ingress") for p in policies),
          "site-agent.yaml: no NetworkPolicy denying all ingress")


# ---------------------------------------------------------------------------------------------------------------
def dockerfile_instructions(path):
    """[(line, INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out = []
    pending = ""
    start = 0
    for number, raw in enumerate(open(path), 1):
        line = raw.rstrip("\n")
        if line.lstrip().startswith("#") or (not pending and not line.strip()):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
    return out


def check_dockerfile(path, targets):
    name = rel(path)
    text = open(path).read()
    instructions = dockerfile_instructions(path)
    args = {}
    stages = []
    named_contexts = set(re.findall(r"--build-context\s+(\w+)=", text))
    for line, instr, rest in instructions:
        if instr == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            image = re.sub(r"\$\{(\w+)\}", lambda g: args.get(g.group(1), ""), m.group(1))
            check(image.startswith("debian:12"), f"{name}:{line}: base image {image} is not Debian 12")
            stages.append((m.group(2), image, []))
        elif stages:
            stages[-1][2].append((line, instr, rest))
    check([s[0] for s in stages] == ["builder", "runtime"], f"{name}: stages {[s[0] for s in stages]}")
    seen_stages = set()
    for stage, image, body in stages:
        for line, instr, rest in body:
            if instr not in ("COPY", "ADD"):
                continue
            words = shlex.split(rest)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source_from = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            check(len(paths) >= 2, f"{name}:{line}: {instr} needs a source and a destination")
            if source_from:
                check(source_from in seen_stages or source_from in named_contexts,
                      f"{name}:{line}: --from={source_from} is neither an earlier stage nor a documented "
                      f"--build-context")
                continue
            for src in paths[:-1]:
                check(os.path.exists(os.path.join(ROOT, src)), f"{name}:{line}: COPY source {src} not in the "
                                                               f"repository")
        seen_stages.add(stage)
    runtime = dict(((instr, rest) for _, instr, rest in stages[-1][2])) if stages else {}
    users = [rest for _, instr, rest in (stages[-1][2] if stages else []) if instr == "USER"]
    check(users and users[-1].split(":")[0] not in ("0", "root"), f"{name}: runtime USER {users}")
    check('"/etc/fedtune"' in runtime.get("VOLUME", "") and '"/var/lib/fedtune"' in runtime.get("VOLUME", ""),
          f"{name}: runtime VOLUME {runtime.get('VOLUME')}")
    check(os.path.isfile(path + ".dockerignore") and "build" in open(path + ".dockerignore").read(),
          f"{name}: no {os.path.basename(path)}.dockerignore keeping build folders out of the context")
    for target in re.findall(r"--target\s+([\w -]+?)\s*(?:\\|&&|$)", text, re.M):
        for t in target.split():
            check(t in targets, f"{name}: build target {t} is defined in no CMakeLists.txt")
    # The package list: the Dockerfile's sed over deploy/setup.sh yields what setup.sh installs.
    m = re.search(r"packages=\"\$\((sed .*?deploy/setup\.sh)\s*\|\s*xargs\)\"", text)
    if check(m, f"{name}: no package extraction from deploy/setup.sh"):
        command = m.group(1).replace("/src/deploy/setup.sh", os.path.join(ROOT, "deploy", "setup.sh"))
        got = subprocess.run(["sh", "-c", command + " | xargs"], capture_output=True, text=True).stdout.split()
        bash = subprocess.run(["bash", "-c", "eval \"$(sed -n '/^packages=(/,/^)/p' \"$1\")\"; "
                               "printf '%s\\n' \"${packages[@]}\"", "_", os.path.join(ROOT, "deploy", "setup.sh")],
                              capture_output=True, text=True).stdout.split()
        check(got == bash and "cmake" in got and "libtorch-dev" in got,
              f"{name}: extracted packages {got} != setup.sh's {bash}")
    return [s[0] for s in stages]


def cmake_targets():
    targets = set()
    for path in glob.glob(os.path.join(ROOT, "**", "CMakeLists.txt"), recursive=True):
        if "/build" in os.path.relpath(path, ROOT).split(os.sep)[0][:6]:
            continue
        for m in re.finditer(r"add_(?:executable|library)\(\s*([\w-]+)", open(path).read()):
            targets.add(m.group(1))
    return targets


# ---------------------------------------------------------------------------------------------------------------
def check_textproto_check_refuses():
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "unknown_field": ("# proto-message: fedtune.v1.RunConfig\nrounds: 3\nround_count: 4\n", [],
                              "round_count"),
            "wrong_default": ("# proto-message: fedtune.v1.RunConfig\nrounds: 5\n", ["--example"], "rounds"),
            "undocumented": ("# proto-message: fedtune.v1.CoordinatorConfig\n# listen_address only\n"
                             "listen_address: \"127.0.0.1:0\"\n", ["--example"], "state_dir"),
            "no_header": ("rounds: 3\n", [], "proto-message"),
        }
        for case, (text, flags, expected) in cases.items():
            path = os.path.join(tmp, case + ".textproto")
            with open(path, "w") as f:
                f.write(text)
            r = subprocess.run([TEXTPROTO_CHECK] + flags + [path], capture_output=True, text=True)
            check(r.returncode == 1 and expected in r.stdout,
                  f"textproto_check accepted {case} (exit {r.returncode}): {r.stdout.strip()}")
        ok = os.path.join(tmp, "ok.textproto")
        with open(ok, "w") as f:
            f.write("# proto-message: fedtune.v1.RunConfig\nrounds: 3\nsites: \"a\"\n")
        r = subprocess.run([TEXTPROTO_CHECK, ok], capture_output=True, text=True)
        check(r.returncode == 0, f"textproto_check refused a valid RunConfig: {r.stdout.strip()}")


def check_runtime_packages():
    programs = [os.path.join(BIN, p) for p in ("fedtune", "fedtune-coordinator", "fedtune-site")] if BIN else []
    programs = [p for p in programs if os.access(p, os.X_OK)]
    if not programs:
        print("runtime-packages.sh: no built programs given; not run")
        return
    r = subprocess.run(["sh", os.path.join(DEPLOY, "docker", "runtime-packages.sh")] + programs, capture_output=True,
                       text=True)
    packages = r.stdout.split()
    if not check(r.returncode == 0 and packages, f"runtime-packages.sh: exit {r.returncode}: {r.stderr.strip()}"):
        return
    print(f"runtime-packages.sh on {len(programs)} programs: {' '.join(packages)}")
    check(any(p.startswith("libtorch") for p in packages), f"runtime-packages.sh: no LibTorch package in {packages}")
    for p in packages:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        check("install ok installed" in q.stdout, f"runtime-packages.sh named {p}, which is not installed")


def main():
    docs = check_yaml_files()
    dockerfile = open(os.path.join(DEPLOY, "docker", "Dockerfile")).read()
    m = re.search(r"useradd .*--uid (\d+)", dockerfile)
    uid = int(m.group(1)) if check(m, "Dockerfile: no useradd --uid") else None
    compose = os.path.join(DEPLOY, "docker", "docker-compose.yml")
    if check(compose in docs, "deploy/docker/docker-compose.yml missing"):
        check_compose(compose, docs[compose][0])
    check_k8s_manifests(docs, uid)
    targets = cmake_targets()
    for df in ("Dockerfile", "Dockerfile.cuda"):
        path = os.path.join(DEPLOY, "docker", df)
        if check(os.path.isfile(path), f"deploy/docker/{df} missing"):
            check_dockerfile(path, targets)
    check_textproto_check_refuses()
    check_runtime_packages()
    for f in failures:
        print("FAIL", f)
    print(f"{checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
