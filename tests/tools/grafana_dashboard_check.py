#!/usr/bin/env python3
"""Checks a Grafana dashboard JSON against the metrics fedtune's programs export (python3 standard library only).

grafana_dashboard_check.py DASHBOARD.json [--scrape FILE]... [--conditional NAME]... [--source-root DIR]
                           [--skip-prefix PREFIX]...
  Always: the JSON loads and has the structure Grafana imports (title, uid, panels with unique ids and a gridPos,
  every non-row panel with at least one target whose expr is PromQL that names at least one fedtune metric).
  With --scrape: every metric name that any PromQL expression of the dashboard queries (panel targets, templating
  queries) must occur in the union of the scraped expositions (text format: sample lines and # TYPE lines; a
  histogram's name_bucket / name_sum / name_count count for it), i.e. exist in a running program. A name that a
  program exports only after some event (a site's first failure, differential privacy) may be named with
  --conditional NAME: it then passes when absent from the scrapes if it appears as a string literal in the C++ sources
  under --source-root (coordinator/, site_agent/, common/), else fails.
  --skip-prefix PREFIX: names with this prefix are reported "SKIP" instead of checked (e.g. a program whose endpoint
  was not scraped).
Prints one line per problem and a summary; exit status 0 when there is none, 1 otherwise, 2 for bad usage.

As a module: metric_names(expr) and dashboard_exprs(dashboard) for the tests (tests/deploy/grafana_dashboard_test.py).
"""
import json
import os
import re
import sys

# PromQL's functions, aggregations, keywords and modifiers: identifiers that are not metric names.
PROMQL_WORDS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "and", "asin", "asinh", "atan", "atanh", "avg",
    "avg_over_time", "bool", "bottomk", "by", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count", "count_over_time", "count_values", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "group", "group_left", "group_right", "histogram_quantile", "holt_winters",
    "hour", "idelta", "ignoring", "increase", "inf", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max", "max_over_time", "min", "min_over_time", "minute", "month", "nan", "offset", "on", "or",
    "pi", "predict_linear", "present_over_time", "quantile", "quantile_over_time", "rad", "rate", "resets", "round",
    "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar",
    "stdvar_over_time", "sum", "sum_over_time", "tan", "tanh", "time", "timestamp", "topk", "unless", "vector",
    "without", "year", "atan2",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def strip_grafana(expr):
    """The expression without Grafana's variables ($site, ${site}, [[site]], $__rate_interval)."""
    expr = re.sub(r"\$\{[^}]*\}|\[\[[^\]]*\]\]", "1", expr)
    return re.sub(r"\$\w+", "1", expr)


def metric_names(expr):
    """The metric names a PromQL expression queries. Grafana's label_values(SELECTOR, label) is read as SELECTOR."""
    m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*\w+\s*\)\s*", expr, re.S)
    if m:
        expr = m.group(1)
    expr = strip_grafana(expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # String literals.
    expr = re.sub(r"\{[^{}]*\}", " ", expr)  # Label matchers.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)  # Label lists.
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # Range and subquery durations.
    expr = re.sub(r"\boffset\s+-?\w+", " ", expr)
    # Numbers (1, 0.95, 1e3, 0x1f) go before the names, so that an exponent is not read as one.
    expr = re.sub(r"\b0x[0-9a-f]+\b|(?<![\w.])\d[\d.]*(?:e[+-]?\d+)?", " ", expr, flags=re.I)
    return [t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if t.lower() not in PROMQL_WORDS]


def _query_text(query):
    if isinstance(query, dict):
        return query.get("query") or query.get("expr") or ""
    return query if isinstance(query, str) else ""


def dashboard_exprs(dashboard):
    """[(where, expr)] of every PromQL expression: panel targets (rows' nested panels included) and templating
    queries of type "query"."""
    found = []

    def walk(panels):
        for p in panels or []:
            for t in p.get("targets", []) or []:
                if isinstance(t, dict) and t.get("expr"):
                    found.append((f"panel {p.get('id')} \"{p.get('title', '')}\" target {t.get('refId', '?')}",
                                  t["expr"]))
            walk(p.get("panels"))

    walk(dashboard.get("panels"))
    for v in (dashboard.get("templating") or {}).get("list", []) or []:
        if v.get("type") == "query":
            text = _query_text(v.get("query"))
            if text:
                found.append((f"variable ${v.get('name')}", text))
    return found


def structure_problems(dashboard):
    """Problems that would make Grafana refuse the dashboard or show an empty panel."""
    problems = []
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dashboard:
            problems.append(f"no \"{key}\"")
    if not isinstance(dashboard.get("panels"), list) or not dashboard.get("panels"):
        problems.append("no panels")
        return problems
    ids = set()

    def walk(panels):
        for p in panels:
            pid = p.get("id")
            if not isinstance(pid, int):
                problems.append(f"panel \"{p.get('title')}\": no integer id")
            elif pid in ids:
                problems.append(f"panel id {pid} is used twice")
            ids.add(pid)
            g = p.get("gridPos") or {}
            if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g.get("x", 0) + g.get("w", 0) > 24:
                problems.append(f"panel {pid} \"{p.get('title')}\": gridPos {g} is not x, y, w, h within 24 columns")
            if not p.get("title"):
                problems.append(f"panel {pid}: no title")
            if p.get("type") == "row":
                walk(p.get("panels") or [])
                continue
            targets = [t for t in p.get("targets") or [] if isinstance(t, dict) and t.get("expr")]
            if not targets:
                problems.append(f"panel {pid} \"{p.get('title')}\": no target with a PromQL expr")
            for t in targets:
                if not any(n.startswith("fedtune_") for n in metric_names(t["expr"])):
                    problems.append(f"panel {pid} target {t.get('refId')}: expr names no fedtune metric: {t['expr']}")
                if t["expr"].count("(") != t["expr"].count(")") or t["expr"].count("{") != t["expr"].count("}"):
                    problems.append(f"panel {pid} target {t.get('refId')}: unbalanced brackets: {t['expr']}")

    walk(dashboard["panels"])
    return problems


def scraped_names(paths):
    """Metric names in text expositions (samples and # TYPE lines), with histograms' base names added."""
    names = set()
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("# TYPE "):
                    names.add(line.split()[2])
                elif line and not line.startswith("#"):
                    m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
                    if m:
                        names.add(m.group(0))
    for n in list(names):
        for suffix in HISTOGRAM_SUFFIXES:
            if n.endswith(suffix):
                names.add(n[: -len(suffix)])
    return names


def in_sources(name, root):
    """True when `name` (or its histogram's base name) appears as a "string literal" in the programs' C++ sources."""
    base = name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
    for folder in ("coordinator", "site_agent", "common"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for f in files:
                if f.endswith((".cc", ".h")):
                    with open(os.path.join(dirpath, f), errors="replace") as src:
                        text = src.read()
                    if f'"{name}"' in text or f'"{base}"' in text:
                        return True
    return False


def main(argv):
    args = argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__.strip().split("\n\n")[1])
        return 2
    dashboard_path = args.pop(0)
    scrapes, conditional, skip, root = [], set(), [], None
    while args:
        flag = args.pop(0)
        if not args:
            print(f"{flag}: missing value")
            return 2
        value = args.pop(0)
        if flag == "--scrape":
            scrapes.append(value)
        elif flag == "--conditional":
            conditional.add(value)
        elif flag == "--skip-prefix":
            skip.append(value)
        elif flag == "--source-root":
            root = value
        else:
            print(f"unknown flag {flag}")
            return 2
    try:
        with open(dashboard_path) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"FAIL {dashboard_path}: {e}")
        return 1
    problems = [f"{dashboard_path}: {p}" for p in structure_problems(dashboard)]
    exprs = dashboard_exprs(dashboard)
    queried = sorted({n for _, e in exprs for n in metric_names(e)})
    checked = skipped = 0
    if scrapes:
        exported = scraped_names(scrapes)
        for name in queried:
            if any(name.startswith(p) for p in skip):
                skipped += 1
                continue
            checked += 1
            if name in exported:
                continue
            if name in conditional and root and in_sources(name, root):
                print(f"ok   {name}: not in the scrapes, exported conditionally (in the sources)")
                continue
            where = [w for w, e in exprs if name in metric_names(e)]
            problems.append(f"{dashboard_path}: {name} (queried by {where[0]}{' and others' if len(where) > 1 else ''})"
                            f" is not exported: absent from {len(scrapes)} scrape(s)")
        if skipped:
            print(f"SKIP {skipped} metric name(s) with prefix {', '.join(skip)} (not scraped)")
    for p in problems:
        print(f"FAIL {p}")
    print(f"{len(exprs)} expressions, {len(queried)} metric names queried, {checked} checked against the scrapes, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
