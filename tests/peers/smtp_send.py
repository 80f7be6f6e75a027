#!/usr/bin/python3
"""SMTP client for phigate's end-to-end tests: implicit TLS, no AUTH (the tests allow
127.0.0.0/8), certificate not verified (the test gateway's is self-signed).

  smtp_send.py eml PORT FILE            send FILE once; print the final reply
  smtp_send.py load PORT COUNT SIZE THREADS DEADLINE_SECS
      send COUNT messages of about SIZE bytes from THREADS threads, reconnecting and
      retrying a message after any error until DEADLINE_SECS; print one line per result:
      "OK <n> <queued-id>", "TEMP <n> <code> <text>", "GIVEUP <n>".
      With a 7th argument "stop-on-temp", all threads stop after the first 4xx.
      Message n carries the token "phigate-test-<n>-" in its Subject and body.
"""
import re
import smtplib
import ssl
import sys
import threading
import time

QUEUED = re.compile(rb"queued as ([0-9A-Z]{26})")


def connect(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
    s.ehlo("client.test")
    return s


def send(s, data):
    code, _ = s.mail("sender@example.org")
    if code != 250:
        s.rset()
        return code, b"MAIL refused"
    code, _ = s.rcpt("rcpt@example.net")
    if code >= 300:
        s.rset()
        return code, b"RCPT refused"
    return s.data(data)


def eml(port, path):
    with open(path, "rb") as f:
        data = f.read()
    s = connect(port)
    code, text = send(s, data)
    print(code, text.decode(errors="replace"), flush=True)
    s.quit()


def load(port, count, size, threads, deadline_secs, stop_on_temp=False):
    stop = threading.Event()
    deadline = time.time() + deadline_secs
    lock = threading.Lock()
    nxt = [0]
    pad = ("x" * 76 + "\r\n") * (size // 78 + 1)

    def worker():
        s = None
        while True:
            with lock:
                n = nxt[0]
                nxt[0] += 1
            if n >= count or stop.is_set():
                break
            token = "phigate-test-%d-" % n
            msg = ("Subject: %s\r\nFrom: sender@example.org\r\nTo: rcpt@example.net\r\n\r\n%s\r\n%s%s\r\n"
                   % (token, token, pad[:size], token)).encode()
            while True:
                if time.time() > deadline:
                    with lock:
                        print("GIVEUP", n, flush=True)
                    break
                try:
                    if s is None:
                        s = connect(port)
                    code, text = send(s, msg)
                except (OSError, smtplib.SMTPException):
                    try:
                        if s is not None:
                            s.close()
                    except OSError:
                        pass
                    s = None
                    time.sleep(0.05)
                    continue
                m = QUEUED.search(text)
                if code == 250 and m:
                    with lock:
                        print("OK", n, m.group(1).decode(), flush=True)
                    break
                with lock:
                    print("TEMP", n, code, text.decode(errors="replace"), flush=True)
                if stop_on_temp:
                    stop.set()
                    break
                time.sleep(0.2)
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    if sys.argv[1] == "eml":
        eml(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "load":
        load(*(int(a) for a in sys.argv[2:7]), stop_on_temp=sys.argv[7:8] == ["stop-on-temp"])
    else:
        sys.exit("usage: smtp_send.py eml|load ...")
