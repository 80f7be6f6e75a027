#!/usr/bin/python3
"""Independent reader of phigate's TLS-RPT reports (RFC 8460): gunzips each report,
parses the JSON and validates it against a JSON schema with python3-jsonschema.

Reads {"schema": path, "reports": [{"kind": "https", "path": BODY} |
{"kind": "mail", "path": EML}]} on stdin. A mail report must be multipart/report with
report-type=tlsrpt and one application/tlsrpt+gzip part. Prints per report
{"ok": bool, "error": str, "report": object, "headers": {...}, "filename": str}.
"""
import email
import email.policy
import gzip
import json
import sys

import jsonschema

spec = json.load(sys.stdin)
with open(spec["schema"]) as f:
    schema = json.load(f)
validator = jsonschema.Draft202012Validator(
    schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def from_mail(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    if msg.get_content_type() != "multipart/report":
        raise ValueError("not multipart/report: " + msg.get_content_type())
    if msg.get_param("report-type") != "tlsrpt":
        raise ValueError("report-type is not tlsrpt")
    parts = [p for p in msg.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip"]
    if len(parts) != 1:
        raise ValueError("expected one application/tlsrpt+gzip part, got %d" % len(parts))
    headers = {k: str(v) for k, v in msg.items()}
    return parts[0].get_payload(decode=True), headers, parts[0].get_filename() or ""


out = []
for r in spec["reports"]:
    res = {"ok": False, "error": "", "report": None, "headers": {}, "filename": ""}
    try:
        if r["kind"] == "mail":
            gz, res["headers"], res["filename"] = from_mail(r["path"])
        else:
            with open(r["path"], "rb") as f:
                gz = f.read()
        report = json.loads(gzip.decompress(gz))
        res["report"] = report
        errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
        if errors:
            res["error"] = "; ".join("%s: %s" % (list(e.path), e.message) for e in errors)
        else:
            res["ok"] = True
    except Exception as e:  # reported to the test, which fails with the reason
        res["error"] = "%s: %s" % (type(e).__name__, e)
    out.append(res)
print(json.dumps(out))
