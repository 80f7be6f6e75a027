#!/usr/bin/env python3
"""Independent HTTPS client for the API tests (Python's standard library only).

Reads {"port", "host", "ca", "parallel" (optional), "requests": [{"method", "path", "key",
"body" (JSON value or raw string), "headers"}]} on stdin and prints [{"status",
"content_type", "retry_after", "replayed", "body"}] on stdout, in request order. The
certificate is verified against `ca` for `host` while connecting to 127.0.0.1. With
"parallel": true every request runs at once on its own connection (for concurrency tests).
"""
import http.client
import json
import socket
import ssl
import sys
import threading

spec = json.load(sys.stdin)
ctx = ssl.create_default_context(cafile=spec["ca"])


class Conn(http.client.HTTPSConnection):
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", spec["port"]), timeout=30)
        self.sock = ctx.wrap_socket(sock, server_hostname=spec["host"])


def run(r):
    c = Conn(spec["host"], spec["port"], context=ctx, timeout=30)
    headers = dict(r.get("headers", {}))
    if r.get("key") is not None:
        headers["Authorization"] = "Bearer " + r["key"]
    body = r.get("body")
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
        body = body.encode()
    c.request(r.get("method", "GET"), r["path"], body=body, headers=headers)
    resp = c.getresponse()
    raw = resp.read().decode("utf-8", "replace")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    c.close()
    return {
        "status": resp.status,
        "content_type": resp.getheader("Content-Type"),
        "retry_after": resp.getheader("Retry-After"),
        "replayed": resp.getheader("Idempotent-Replayed"),
        "body": parsed,
    }


reqs = spec["requests"]
out = [None] * len(reqs)
if spec.get("parallel"):
    def worker(i):
        out[i] = run(reqs[i])
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
else:
    for i, r in enumerate(reqs):
        out[i] = run(r)
json.dump(out, sys.stdout)
