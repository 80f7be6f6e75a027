#!/usr/bin/env python3
"""Independent DKIM verifier for the signing tests (dkimpy, Debian's python3-dkim).

Reads {"messages": [path, ...], "records": {"sel._domainkey.dom": "v=DKIM1; ..."}} or
{"messages": [...], "dns": "ADDR:PORT"} on stdin; prints [{"signed": bool, "ok": bool,
"d": str, "a": str, "s": str}] per message. DNS is the given records, or TXT answers from the
server at ADDR:PORT (kdig), e.g. the knotd serving the signed test zone.
"""
import json
import subprocess
import sys

import dkim

spec = json.load(sys.stdin)
records = {k.rstrip(".").lower(): v for k, v in spec.get("records", {}).items()}


def from_server(name):
    host, port = spec["dns"].rsplit(":", 1)
    out = subprocess.run(
        ["kdig", "+short", "+time=2", "+retry=1", "@" + host, "-p", port, "TXT", name],
        capture_output=True, text=True, check=False).stdout
    line = out.strip().splitlines()[0] if out.strip() else ""
    # kdig prints the character-strings quoted: "a" "b" -> ab
    return "".join(line.split('"')[1::2]) or None


def dnsfunc(name, timeout=5):
    key = name.decode().rstrip(".").lower()
    rec = from_server(key) if "dns" in spec else records.get(key)
    return rec.encode() if rec is not None else None


out = []
for path in spec["messages"]:
    msg = open(path, "rb").read()
    d = dkim.DKIM(msg)
    signed = b"dkim-signature:" in msg.lower()
    ok = False
    tags = {}
    if signed:
        try:
            ok = d.verify(dnsfunc=dnsfunc)
        except Exception as e:  # a verifier error is a failed verification
            print("verify error: %s" % e, file=sys.stderr)
        if d.signature_fields:
            tags = {k.decode(): v.decode() for k, v in d.signature_fields.items()}
    out.append({"signed": signed, "ok": bool(ok), "d": tags.get("d", ""), "a": tags.get("a", ""),
                "s": tags.get("s", "")})
json.dump(out, sys.stdout)
