#!/usr/bin/env python3
"""A tiny HTTP client for the integration tests (python3 stdlib only; no JavaScript, like a plain browser without it).

  http_get.py [--status] [--method M] [--host H] URL

Prints the response body (exit 1 unless the status is 200), or with --status only the status code (exit 0).
--host sends that Host header instead of the URL's; every request has a 30 s timeout.
"""
import argparse
import http.client
import sys
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--status", action="store_true")
parser.add_argument("--method", default="GET")
parser.add_argument("--host")
parser.add_argument("url")
args = parser.parse_args()
url = urllib.parse.urlsplit(args.url)
connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
path = (url.path or "/") + (f"?{url.query}" if url.query else "")
headers = {"Host": args.host} if args.host else {}
connection.request(args.method, path, body=b"" if args.method == "POST" else None, headers=headers)
response = connection.getresponse()
body = response.read()
if args.status:
    print(response.status)
    sys.exit(0)
sys.stdout.write(body.decode("utf-8", errors="replace"))
sys.exit(0 if response.status == 200 else 1)
