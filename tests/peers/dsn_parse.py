#!/usr/bin/python3
"""Parse a DSN (RFC 3464) with Python's `email` package, independent of the mail-parser
crate phigate itself uses. Reads the message on stdin; prints JSON: top-level type and
report-type, the part types, the per-message and per-recipient delivery-status fields
(names lower-cased), and the Auto-Submitted header. Exits non-zero if it does not parse.
"""
import email
import email.policy
import json
import sys

msg = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)
if msg.defects:
    sys.exit(f"DSN has MIME defects: {msg.defects}")
out = {
    "type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "auto_submitted": str(msg.get("Auto-Submitted", "")),
    "date_parses": msg.get("Date") is not None and msg["Date"].datetime is not None,
    "parts": [],
    "per_message": {},
    "recipients": [],
}
if msg.is_multipart():
    for part in msg.iter_parts():
        out["parts"].append(part.get_content_type())
        if part.defects:
            sys.exit(f"DSN part {part.get_content_type()} has defects: {part.defects}")
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            if not blocks:
                sys.exit("message/delivery-status has no field blocks")
            fields = lambda b: {k.lower(): str(v) for k, v in b.items()}
            out["per_message"] = fields(blocks[0])
            out["recipients"] = [fields(b) for b in blocks[1:]]
json.dump(out, sys.stdout)
