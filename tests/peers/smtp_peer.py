#!/usr/bin/python3
"""Scripted SMTP client for phigate's integration tests: an independent peer built on
Python's socket + ssl (OpenSSL), not on phigate's own code.

Reads JSON on stdin: one session object, or {"sessions": [session, ...]} run in order.
A session: host, port, mode ("implicit" | "plain"), cafile, servername, optional
cert/key (client certificate), source (local address to bind), and steps. Each step
may have:
  send      text sent as latin-1 bytes (so any byte 0-255 can be written)
  replies   number of complete SMTP replies to read afterwards (default 1)
  drain     seconds to keep reading extra replies (to catch smuggled transactions)
  sentinel  true: after the replies, send HELP and keep every reply until its 214 (or
            EOF): replies come in order, so this collects all extra replies (smuggled
            transactions) without a fixed read window
  tls       true: wrap the socket in TLS now (after STARTTLS's 220)
  sleep     seconds to wait before the step
  touch     path to create when the step starts (all earlier replies are in), so a test
            can wait for that point instead of sleeping
  wait_file path to wait for (up to 60 s) before the step
  timeout   read timeout for this step (default 15 s)
Prints JSON: {"greeting": reply, "steps": [{"replies": [reply...], "closed": bool}],
"tls": {"version", "cipher", "peer_sha256"}} where reply = {"code": int, "lines": [...]}.
"""
import hashlib
import json
import os
import socket
import ssl
import sys
import time


class Peer:
    def __init__(self, spec):
        self.spec = spec
        self.buf = b""
        self.closed = False
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if spec.get("source"):
            raw.bind((spec["source"], 0))
        raw.settimeout(15)
        raw.connect((spec.get("host", "127.0.0.1"), spec["port"]))
        self.sock = raw
        self.tls = None
        if spec.get("mode") == "implicit":
            self.start_tls()

    def start_tls(self):
        ctx = ssl.create_default_context(cafile=self.spec["cafile"])
        if self.spec.get("cert"):
            ctx.load_cert_chain(self.spec["cert"], self.spec["key"])
        if self.spec.get("tls_max") == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.sock = ctx.wrap_socket(
            self.sock, server_hostname=self.spec.get("servername", "localhost")
        )
        der = self.sock.getpeercert(binary_form=True)
        self.tls = {
            "version": self.sock.version(),
            "cipher": self.sock.cipher()[0],
            "peer_sha256": hashlib.sha256(der).hexdigest(),
        }
        # Bytes read before the handshake belong to the plaintext phase.
        self.buf = b""

    def read_reply(self, timeout):
        lines = []
        deadline = time.time() + timeout
        while True:
            while b"\r\n" not in self.buf:
                left = deadline - time.time()
                if left <= 0 or self.closed:
                    return None
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    return None
                except (ConnectionError, ssl.SSLError, OSError):
                    chunk = b""
                if not chunk:
                    self.closed = True
                    return None
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("latin-1")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                try:
                    code = int(text[:3])
                except ValueError:
                    code = 0
                return {"code": code, "lines": lines}

    def step(self, st):
        if st.get("touch"):
            with open(st["touch"], "w"):
                pass
        if st.get("wait_file"):
            deadline = time.time() + 60
            while not os.path.exists(st["wait_file"]) and time.time() < deadline:
                time.sleep(0.05)
        if st.get("sleep"):
            time.sleep(st["sleep"])
        if st.get("tls"):
            self.start_tls()
        out = {"replies": [], "closed": False}
        if "send" in st:
            try:
                self.sock.sendall(st["send"].encode("latin-1"))
            except (ConnectionError, ssl.SSLError, OSError):
                self.closed = True
        timeout = st.get("timeout", 15)
        for _ in range(st.get("replies", 1)):
            r = self.read_reply(timeout)
            if r is None:
                break
            out["replies"].append(r)
        if st.get("sentinel") and not self.closed:
            try:
                self.sock.sendall(b"HELP\r\n")
            except (ConnectionError, ssl.SSLError, OSError):
                self.closed = True
            while True:
                r = self.read_reply(timeout)
                if r is None or r["code"] == 214:
                    break
                out["replies"].append(r)
        if st.get("drain"):
            while True:
                r = self.read_reply(st["drain"])
                if r is None:
                    break
                out["replies"].append(r)
        out["closed"] = self.closed
        return out


def run(spec):
    try:
        p = Peer(spec)
    except (OSError, ssl.SSLError) as e:
        return {"error": str(e)}
    res = {"greeting": p.read_reply(15), "steps": []}
    for st in spec.get("steps", []):
        try:
            res["steps"].append(p.step(st))
        except (OSError, ssl.SSLError) as e:
            res["steps"].append({"replies": [], "closed": True, "error": str(e)})
            break
    res["tls"] = p.tls
    try:
        p.sock.close()
    except OSError:
        pass
    return res


def main():
    spec = json.load(sys.stdin)
    if "sessions" in spec:
        out = [run(s) for s in spec["sessions"]]
    else:
        out = run(spec)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
