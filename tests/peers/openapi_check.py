#!/usr/bin/env python3
"""Validate real API responses against phigate's OpenAPI 3.1 document (jsonschema,
Draft 2020-12, the dialect OpenAPI 3.1 schemas are written in).

Reads {"doc": <openapi.json>, "cases": [{"method", "path" (as in the document, e.g.
/v1/messages/{id}), "status", "content_type", "body"}]} on stdin; prints {"errors": [...]}
naming every response whose status or media type the document does not list, or whose
body does not match the schema it gives.
"""
import json
import sys

from jsonschema import Draft202012Validator

spec = json.load(sys.stdin)
doc = spec["doc"]
errors = []
if not str(doc.get("openapi", "")).startswith("3.1"):
    errors.append("not an OpenAPI 3.1 document: %r" % doc.get("openapi"))
for c in spec["cases"]:
    where = "%s %s %s" % (c["method"].upper(), c["path"], c["status"])
    op = doc.get("paths", {}).get(c["path"], {}).get(c["method"].lower())
    if op is None:
        errors.append(where + ": operation not documented")
        continue
    resp = op.get("responses", {}).get(str(c["status"]))
    if resp is None:
        errors.append(where + ": status not documented")
        continue
    media = (c.get("content_type") or "").split(";")[0].strip()
    content = resp.get("content", {}).get(media)
    if content is None:
        errors.append(where + ": media type %r not documented" % media)
        continue
    schema = dict(content.get("schema", {}))
    # References point into the document's components: resolve them from this root.
    schema["components"] = doc.get("components", {})
    Draft202012Validator.check_schema(schema)
    for e in Draft202012Validator(schema).iter_errors(c["body"]):
        errors.append("%s: %s at %s" % (where, e.message[:200], list(e.absolute_path)))
json.dump({"errors": errors}, sys.stdout)
