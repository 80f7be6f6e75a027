#!/usr/bin/python3
"""A receiving MTA for leak tests: aiosmtpd on 127.0.0.1:PORT that requires STARTTLS
(so nothing after EHLO crosses the wire in plaintext), refuses RCPT for any local part
starting with "bounce" with 550, and writes each accepted message to OUTDIR/N.eml with
its envelope in OUTDIR/N.json.

usage: tls_sink.py PORT CERT KEY OUTDIR [HOST]     (prints "ready" once listening;
HOST defaults to 127.0.0.1, e.g. 127.0.0.4 to be one of several MX hosts on one port)
       tls_sink.py PORT - - OUTDIR [HOST]             (a server that offers no STARTTLS at all)
"""
import asyncio
import json
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, outdir):
        self.outdir = outdir
        self.n = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].lower().startswith("bounce"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        base = os.path.join(self.outdir, str(self.n))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                       "tls": session.ssl is not None}, f)
        return "250 2.0.0 stored"


def main():
    port, cert, key, outdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    host = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
    ctx = None
    if cert != "-":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    ctrl = Controller(Sink(outdir), hostname=host, port=port,
                      tls_context=ctx, require_starttls=ctx is not None,
                      server_hostname="mx.x.test", decode_data=False)
    ctrl.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        ctrl.stop()


if __name__ == "__main__":
    main()
