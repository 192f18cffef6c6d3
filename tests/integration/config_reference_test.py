#!/usr/bin/env python3
"""Checks docs/config-reference.md against the configuration schemas: every field of every message in the listed
.proto files must appear in the reference as `field`. Usage: config_reference_test.py REPO_ROOT"""
import os
import re
import sys

CONFIG_PROTOS = ["finetune.proto", "synth_profile.proto"]


def fields(proto_text):
    body = re.sub(r"//.*", "", proto_text)
    found = []
    for message, block in re.findall(r"message\s+(\w+)\s*\{([^{}]*)\}", body):
        for name in re.findall(r"^\s*(?:optional|repeated|required)?\s*[\w.]+\s+(\w+)\s*=\s*\d+", block, re.M):
            found.append((message, name))
    return found


def main():
    root = sys.argv[1]
    doc = open(os.path.join(root, "docs", "config-reference.md")).read()
    missing = []
    total = 0
    for proto in CONFIG_PROTOS:
        for message, name in fields(open(os.path.join(root, "protos", "fedtune", "v1", proto)).read()):
            total += 1
            if f"`{name}`" not in doc:
                missing.append(f"{proto}: {message}.{name}")
    for m in missing:
        print("not documented in docs/config-reference.md:", m)
    print(f"{total - len(missing)} passed, {len(missing)} failed")
    return 1 if missing or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
