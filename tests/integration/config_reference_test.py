#!/usr/bin/env python3
"""Checks docs/config-reference.md against the configuration schemas. For every message of the listed .proto files:
* every field appears as `field` in the reference's sections (## headings) that name the .proto file;
* in a message's block — from the line naming `fedtune.v1.Message` to the next line naming another message or the
  next ## heading — every field has a table row (| `field` | default | meaning |) when the block has such a table,
  and every field with a `[default = V]` has a row whose default cell shows V.
Usage: config_reference_test.py REPO_ROOT"""
import os
import re
import sys

CONFIG_PROTOS = ["finetune.proto", "synth_profile.proto", "federation_config.proto"]


def fields(proto_text):
    """[(message, field, default or None)] of the top-level messages (no nested message definitions)."""
    body = re.sub(r"//.*", "", proto_text)
    # Nested enum definitions (e.g. RunConfig.Personalization) hold no fields: drop them so that their braces do not
    # hide the enclosing message from the match below.
    body = re.sub(r"\benum\s+\w+\s*\{[^{}]*\}", "", body)
    found = []
    for message, block in re.findall(r"message\s+(\w+)\s*\{([^{}]*)\}", body):
        for name, options in re.findall(
                r"^\s*(?:optional|repeated|required)?\s*[\w.]+\s+(\w+)\s*=\s*\d+\s*(\[[^\]]*\])?\s*;", block, re.M):
            m = re.search(r"default\s*=\s*(\"[^\"]*\"|[^\],\s]+)", options)
            found.append((message, name, m.group(1).strip('"') if m else None))
    return found


def sections(doc):
    """{heading line: text} for the ## sections."""
    parts = re.split(r"^(## .*)$", doc, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def message_block(doc, message):
    """The lines from the first one naming `fedtune.v1.<message>` to the next naming another message or heading."""
    lines = doc.split("\n")
    start = next((i for i, l in enumerate(lines) if f"`fedtune.v1.{message}`" in l), None)
    if start is None:
        return ""
    end = start + 1
    while end < len(lines):
        l = lines[end]
        if l.startswith("## ") or re.search(r"`fedtune\.v1\.(?!" + message + r"`)\w+`", l):
            break
        end += 1
    return "\n".join(lines[start:end])


def shows_default(cell, default):
    cell = cell.replace("`", "")
    return re.search(r"(?<![\w.])" + re.escape(default) + r"(?![\w.])", cell) is not None


def main():
    root = sys.argv[1]
    doc = open(os.path.join(root, "docs", "config-reference.md")).read()
    by_heading = sections(doc)
    problems = []
    total = 0
    for proto in CONFIG_PROTOS:
        region = "\n".join(text for heading, text in by_heading.items() if f"(`{proto}`)" in heading)
        if not region:
            problems.append(f"{proto}: no ## section names (`{proto}`)")
        for message, name, default in fields(open(os.path.join(root, "protos", "fedtune", "v1", proto)).read()):
            total += 1
            if f"`{name}`" not in region:
                problems.append(f"{proto}: {message}.{name} is not documented in the {proto} sections")
                continue
            block = message_block(doc, message)
            has_field_table = re.search(r"^\|\s*field\s*\|\s*default\s*\|", block, re.M) is not None
            if default is None and not has_field_table:
                continue
            rows = re.findall(r"^\|\s*`" + name + r"`\s*\|([^|]*)\|", block, re.M)
            if not rows:
                problems.append(f"{proto}: {message}.{name}: no table row in the block of fedtune.v1.{message}")
            elif default is not None and not any(shows_default(cell, default) for cell in rows):
                problems.append(f"{proto}: {message}.{name}: documented default {rows[0].strip()!r}, schema's "
                                f"default {default}")
    for m in problems:
        print("docs/config-reference.md:", m)
    print(f"{total - len(problems)} passed, {len(problems)} failed")
    return 1 if problems or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
