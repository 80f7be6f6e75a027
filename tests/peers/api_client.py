#!/usr/bin/env python3
"""Independent HTTPS client for the API tests (Python's standard library only).

Reads {"port", "host", "ca", "requests": [{"method", "path", "key", "body" (JSON value
or raw string), "headers"}]} on stdin and prints [{"status", "content_type",
"retry_after", "body"}] on stdout. The certificate is verified against `ca` for `host`
while connecting to 127.0.0.1.
"""
import http.client
import json
import socket
import ssl
import sys

spec = json.load(sys.stdin)
ctx = ssl.create_default_context(cafile=spec["ca"])


class Conn(http.client.HTTPSConnection):
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", spec["port"]), timeout=30)
        self.sock = ctx.wrap_socket(sock, server_hostname=spec["host"])


out = []
for r in spec["requests"]:
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
    out.append({
        "status": resp.status,
        "content_type": resp.getheader("Content-Type"),
        "retry_after": resp.getheader("Retry-After"),
        "body": parsed,
    })
    c.close()
json.dump(out, sys.stdout)
