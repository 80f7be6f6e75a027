#!/usr/bin/env python3
"""Independent DKIM verifier for the signing tests (dkimpy, Debian's python3-dkim).

Reads {"messages": [path, ...], "records": {"sel._domainkey.dom": "v=DKIM1; ..."}} on
stdin; prints [{"signed": bool, "ok": bool, "d": str, "a": str}] per message. DNS is the
given records (dnsfunc), so the check is exactly signature against published key.
"""
import json
import sys

import dkim

spec = json.load(sys.stdin)
records = {k.rstrip(".").lower(): v for k, v in spec["records"].items()}


def dnsfunc(name, timeout=5):
    key = name.decode().rstrip(".").lower()
    rec = records.get(key)
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
    out.append({"signed": signed, "ok": bool(ok), "d": tags.get("d", ""), "a": tags.get("a", "")})
json.dump(out, sys.stdout)
