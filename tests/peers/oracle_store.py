#!/usr/bin/python3
"""Independent oracle for phigate's stored records (tests/oracles.rs).

Implements docs/storage-format.md with Python's `cryptography` package, nothing from
phigate: reads the keyring file, unwraps a message's data key, opens its sealed content
(a record, or a chunked blob file for large messages) and envelope, and walks the audit chain (HMAC, hash links, head marker, sealed person
fields). Input: JSON on stdin (raw rows as hex, from the test). Output: JSON on stdout.
Exits non-zero with a message on the first check that fails.
"""
import base64
import hashlib
import hmac
import json
import struct
import sys
import tomllib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def ulid_bytes(s):
    n = 0
    for c in s.upper():
        n = n * 32 + CROCKFORD.index(c)
    return n.to_bytes(16, "big")


def keyring(path):
    with open(path, "rb") as f:
        ring = tomllib.load(f)
    return {k["id"]: base64.b64decode(k["key"]) for k in ring["keys"]}


def unwrap(keys, msg_id, wrapped):
    if wrapped[0] != 1:
        fail("wrap: version is not 1")
    n = wrapped[1]
    mk_id = wrapped[2 : 2 + n]
    rest = wrapped[2 + n :]
    dk_id, nonce, ct = rest[:8], rest[8:20], rest[20:]
    if len(ct) != 32 + 16:
        fail("wrap: wrapped key is not 32+16 bytes")
    aad = b"phigate-spool-wrap-v1" + msg_id + bytes([n]) + mk_id + dk_id
    try:
        dk = AESGCM(keys[mk_id.decode()]).decrypt(nonce, ct, aad)
    except InvalidTag:
        fail("wrap: AES-256-GCM authentication failed with the documented AAD")
    return dk_id, dk


def open_record(dk_id, dk, msg_id, kind, blob):
    if blob[0] != 1 or blob[1] != kind or blob[2:10] != dk_id:
        fail(f"record kind {kind}: header does not match the documented layout")
    nonce, ct = blob[10:22], blob[22:]
    aad = b"phigate-spool-record-v1" + bytes([kind]) + msg_id + dk_id
    try:
        plain = AESGCM(dk).decrypt(nonce, ct, aad)
    except InvalidTag:
        fail(f"record kind {kind}: AES-256-GCM authentication failed with the documented AAD")
    # The AAD must matter: the same blob labelled as another kind must not open.
    other = bytes([kind % 3 + 1])
    try:
        AESGCM(dk).decrypt(nonce, ct, b"phigate-spool-record-v1" + other + msg_id + dk_id)
        fail(f"record kind {kind}: opened under another kind's AAD")
    except InvalidTag:
        pass
    return plain


def open_blob(dk_id, dk, msg_id, path):
    """Content over the inline limit: the chunked file of docs/storage-format.md."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"PHGBLOB1":
        fail("blob: bad magic")
    chunk, count, length = struct.unpack(">IIQ", data[8:24])
    key = hmac.new(dk, b"phigate blob chunk key v1", hashlib.sha256).digest()
    aes = AESGCM(key)
    out, pos = b"", 32
    for i in range(count):
        n = min(chunk, length - i * chunk)
        ct = data[pos : pos + n + 16]
        pos += n + 16
        nonce = struct.pack(">I", i) + bytes(8)
        aad = b"phigate-blob-chunk-v1" + msg_id + dk_id + struct.pack(">II", i, count)
        try:
            out += aes.decrypt(nonce, ct, aad)
        except InvalidTag:
            fail(f"blob chunk {i}: AES-256-GCM authentication failed with the documented AAD")
        if i > 0:
            # Bound to its index: the previous chunk's nonce and AAD must not open it.
            prev = struct.pack(">I", i - 1) + bytes(8)
            paad = b"phigate-blob-chunk-v1" + msg_id + dk_id + struct.pack(">II", i - 1, count)
            try:
                aes.decrypt(prev, ct, paad)
                fail(f"blob chunk {i}: opened as chunk {i - 1}")
            except InvalidTag:
                pass
    if pos != len(data) or len(out) != length:
        fail("blob: length does not match the header")
    return out


def audit_keys(master):
    def derive(info):
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"phigate-audit-v1", info=info
        ).derive(master)

    return derive(b"audit-encryption"), derive(b"audit-hmac")


def walk_audit(keys, rows, head, anchor):
    derived = {}

    def k(key_id):
        if key_id not in derived:
            derived[key_id] = audit_keys(keys[key_id])
        return derived[key_id]

    if anchor is not None:
        a = json.loads(anchor)
        expected, prev = a["seq"] + 1, bytes.fromhex(a["hash"])
    else:
        expected, prev = 1, bytes(32)
    kinds, private = [], {}
    for key_hex, value_hex in rows:
        seq = struct.unpack(">Q", bytes.fromhex(key_hex))[0]
        stored = bytes.fromhex(value_hex)
        if seq != expected:
            fail(f"audit: seq {seq} where {expected} was expected")
        body, mac = stored[:-32], stored[-32:]
        b = json.loads(body)
        if b["v"] != 1 or b["seq"] != seq or bytes.fromhex(b["prev"]) != prev:
            fail(f"audit {seq}: body does not chain to the previous record")
        enc, mk = k(b["key"])
        want = hmac.new(
            mk, b"phigate-audit-mac-v1" + struct.pack(">Q", seq) + prev + body, hashlib.sha256
        ).digest()
        if not hmac.compare_digest(want, mac):
            fail(f"audit {seq}: HMAC does not match the documented construction")
        if "sealed" in b:
            raw = base64.b64decode(b["sealed"])
            try:
                plain = AESGCM(enc).decrypt(
                    raw[:12], raw[12:], b"phigate-audit-seal-v1" + struct.pack(">Q", seq)
                )
            except InvalidTag:
                fail(f"audit {seq}: sealed fields do not open")
            private[str(seq)] = json.loads(plain)
        kinds.append(b["kind"])
        prev = hashlib.sha256(stored).digest()
        expected = seq + 1
    last = expected - 1
    h = json.loads(head)
    _, mk = k(h["key"])
    want = hmac.new(
        mk,
        b"phigate-audit-head-v1" + struct.pack(">Q", h["seq"]) + bytes.fromhex(h["hash"]),
        hashlib.sha256,
    ).hexdigest()
    if h["seq"] != last or bytes.fromhex(h["hash"]) != prev or want != h["mac"]:
        fail(f"audit: head marker {h} does not match the chain (last {last})")
    return {"records": len(kinds), "kinds": kinds, "private": private}


def main():
    spec = json.load(sys.stdin)
    keys = keyring(spec["keyring"])
    out = {"messages": {}}
    for m in spec["messages"]:
        msg_id = ulid_bytes(m["id"])
        dk_id, dk = unwrap(keys, msg_id, bytes.fromhex(m["wrap"]))
        if m.get("blob"):
            if m["content"] != "":
                fail("a blob message must have an empty content row")
            content = open_blob(dk_id, dk, msg_id, m["blob"])
        else:
            content = open_record(dk_id, dk, msg_id, 1, bytes.fromhex(m["content"]))
        envelope = open_record(dk_id, dk, msg_id, 2, bytes.fromhex(m["envelope"]))
        out["messages"][m["id"]] = {
            "content": content.decode("utf-8", "replace"),
            "envelope": json.loads(envelope),
        }
    out["audit"] = walk_audit(keys, spec["audit"], spec["head"], spec.get("anchor"))
    json.dump(out, sys.stdout)


main()
