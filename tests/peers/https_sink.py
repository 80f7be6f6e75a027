#!/usr/bin/python3
"""A TLS-RPT report receiver: Python's http.server over ssl on HOST:PORT that answers
every POST with 200 and writes its body to OUTDIR/N.body and its request line and
headers to OUTDIR/N.json.

usage: https_sink.py HOST PORT CERT KEY OUTDIR      (prints "ready" once listening)
"""
import http.server
import json
import os
import ssl
import sys


def main():
    host, port, cert, key, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    count = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            count[0] += 1
            base = os.path.join(outdir, str(count[0]))
            with open(base + ".body", "wb") as f:
                f.write(body)
            with open(base + ".json", "w") as f:
                json.dump({"path": self.path, "headers": dict(self.headers.items())}, f)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer((host, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print("ready", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
