#!/usr/bin/env python3
"""Drives headless Chromium through chromedriver's W3C WebDriver HTTP API (urllib + json only, no selenium) for
tests/integration/dashboard_test.sh.

  dashboard_browser.py CHROMEDRIVER_URL DASHBOARD_URL WORK_DIR ARTIFACT_DIR

1. Opens DASHBOARD_URL once (before the run starts), checks the sites table lists site-a and site-b and reads the
   current round from the DOM (#current-round[data-round]: no run yet, or round 0 or 1); marks the window (a JS
   variable a reload would clear) and writes WORK_DIR/page-loaded, so that the test starts the run.
2. Without reloading, polls the DOM (bounded) until it shows a round >= 1 later than the first read's: the page
   updated itself live (however fast the run, even straight to its last round). Takes a screenshot then
   (ARTIFACT_DIR/dashboard-live.png).
3. Waits (bounded) until the page shows the run completed with every round in the loss chart, checks the run is in
   the history with a report link and that the window was never reloaded, and takes ARTIFACT_DIR/dashboard.png.
4. Follows the report link and checks the consortium report loads.
Prints one "ok ..." line per check; exits 1 with "FAIL: ..." at the first failed check.
"""
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

driver, page_url, work, artifacts = sys.argv[1:5]
session = None


def fail(message):
    print(f"FAIL: {message}", flush=True)
    raise SystemExit(1)


def call(method, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{driver}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["value"]
    except urllib.error.HTTPError as e:
        fail(f"WebDriver {method} {path}: HTTP {e.code}: {e.read()[:600]!r}")
    except OSError as e:
        fail(f"WebDriver {method} {path}: {e}")


def js(script):
    return call("POST", f"/session/{session}/execute/sync", {"script": script, "args": []})


def dom():
    """What the test reads from the page, in one round trip."""
    return js("""
      const r = document.getElementById('current-round');
      const run = document.getElementById('run-section');
      const chart = document.getElementById('loss-chart');
      return {
        round: r ? parseInt(r.getAttribute('data-round'), 10) : -1,
        rounds: r ? parseInt(r.getAttribute('data-rounds'), 10) : -1,
        run_id: run ? run.getAttribute('data-run-id') : null,
        run_state: run ? run.getAttribute('data-state') : null,
        sites: Array.from(document.querySelectorAll('#sites tr[data-site]')).map(e => e.getAttribute('data-site')),
        runs: Array.from(document.querySelectorAll('#runs tr[data-run-id]')).map(e => e.getAttribute('data-run-id')),
        points: chart ? parseInt(chart.getAttribute('data-points'), 10) : -1,
        seq: parseInt(document.body.getAttribute('data-seq'), 10),
        live: (document.getElementById('live') || {}).textContent,
        marker: window.__fedtuneDashboardTest || null,
        report_link: (document.querySelector('#runs a[href$="/report"]') || {}).href || null,
        error: (document.getElementById('error') || {}).textContent || null,
      };""")


def wait_for(what, predicate, seconds):
    deadline = time.monotonic() + seconds
    state = dom()
    while not predicate(state):
        if time.monotonic() > deadline:
            fail(f"{what} within {seconds} s; the page shows {json.dumps(state)}")
        time.sleep(0.25)
        state = dom()
    return state


def screenshot(name):
    png = base64.b64decode(call("GET", f"/session/{session}/screenshot"))
    if not png.startswith(b"\x89PNG"):
        fail(f"the screenshot {name} is not a PNG")
    path = os.path.join(artifacts, name)
    with open(path, "wb") as f:
        f.write(png)
    print(f"ok   screenshot saved: {path} ({len(png)} bytes)", flush=True)


try:
    created = call("POST", "/session", {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     f"--user-data-dir={work}/chromium-profile", "--window-size=1280,1500"],
        }}}}, timeout=120)
    session = created["sessionId"]
    call("POST", f"/session/{session}/url", {"url": page_url})
    js("window.__fedtuneDashboardTest = 'loaded once';")
    first = wait_for("the sites table listing site-a and site-b",
                     lambda s: {"site-a", "site-b"} <= set(s["sites"]), 30)
    print(f"ok   page opened once: sites {first['sites']}, current round {first['round']}", flush=True)
    first = wait_for("the live indicator", lambda s: s["live"] == "live", 30)
    print("ok   the page subscribed to live updates (server-sent events)", flush=True)
    # The run has not started yet: no run on the page (round -1), or at most its first round.
    if first["round"] > 1:
        fail(f"the page shows round {first['round']} before the run started")
    with open(os.path.join(work, "page-loaded"), "w") as f:
        f.write(str(first["round"]))

    # The run starts now (the test script); the page must follow it without a reload (the marker proves that).
    seen = [first["round"]]

    def advanced(state):
        if seen[-1] != state["round"]:
            seen.append(state["round"])
        return state["round"] >= 1 and state["round"] > seen[0]

    state = wait_for("the DOM showing a round and then a later one, without a reload", advanced, 150)
    if state["marker"] != "loaded once":
        fail("the page was reloaded (the window's marker is gone)")
    print(f"ok   live update without reload: the DOM showed rounds {seen} of {state['rounds']} "
          f"(run {state['run_id']}, snapshot {state['seq']})", flush=True)
    screenshot("dashboard-live.png")

    final = wait_for("the run completed with every round in the loss chart",
                     lambda s: s["run_state"] == "completed" and s["points"] == s["rounds"] and s["runs"], 240)
    if final["marker"] != "loaded once":
        fail("the page was reloaded (the window's marker is gone)")
    if set(final["sites"]) != {"site-a", "site-b"}:
        fail(f"the sites table shows {final['sites']}")
    if final["run_id"] not in final["runs"]:
        fail(f"run {final['run_id']} is not in the runs history {final['runs']}")
    if not final["report_link"]:
        fail("the runs history has no report link")
    if final["error"]:
        fail(f"the page shows an error: {final['error']}")
    print(f"ok   run {final['run_id']} completed on the page: round {final['round']} of {final['rounds']}, "
          f"{final['points']} points in the loss chart, history {final['runs']}, still the page loaded once",
          flush=True)
    screenshot("dashboard.png")

    call("POST", f"/session/{session}/url", {"url": final["report_link"]})
    title = call("GET", f"/session/{session}/title")
    if final["run_id"] not in title or "consortium report" not in title:
        fail(f"the report link opened a page titled {title!r}")
    print(f"ok   the report link opens the consortium report ({title!r})", flush=True)
finally:
    if session:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{driver}/session/{session}", method="DELETE"), timeout=30)
        except OSError:
            pass
