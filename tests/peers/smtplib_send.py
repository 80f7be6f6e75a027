#!/usr/bin/python3
"""Send one message with Python's smtplib (an independent SMTP client).

Argument: JSON with port, mode ("starttls" | "implicit"), cafile, servername, from,
to (list), msg_file, optional user/password, mail_options, rcpt_options.
Prints JSON: {"ehlo": [code, text], "auth": [code, text] | null, "data": [code, text]}
or {"error": "...", "smtp_code": int} when the server refuses something.
"""
import json
import smtplib
import ssl
import sys


def main():
    a = json.loads(sys.argv[1])
    ctx = ssl.create_default_context(cafile=a["cafile"])
    host = a.get("servername", "localhost")
    out = {"auth": None}
    try:
        if a["mode"] == "implicit":
            s = smtplib.SMTP_SSL(host, a["port"], context=ctx, timeout=20)
            out["ehlo"] = list(s.ehlo("ehr.clinic.test"))
        else:
            s = smtplib.SMTP(host, a["port"], timeout=20)
            s.ehlo("ehr.clinic.test")
            s.starttls(context=ctx)
            out["ehlo"] = list(s.ehlo("ehr.clinic.test"))
        out["ehlo"][1] = out["ehlo"][1].decode()
        if a.get("user"):
            code, text = s.login(a["user"], a["password"])
            out["auth"] = [code, text.decode()]
        code, text = s.mail(a["from"], a.get("mail_options", []))
        if code != 250:
            raise smtplib.SMTPResponseException(code, text)
        for r in a["to"]:
            code, text = s.rcpt(r, a.get("rcpt_options", []))
            if code != 250:
                raise smtplib.SMTPResponseException(code, text)
        with open(a["msg_file"], "rb") as f:
            code, text = s.data(f.read())
        out["data"] = [code, text.decode()]
        s.quit()
    except smtplib.SMTPResponseException as e:
        out["error"] = e.smtp_error.decode() if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        out["smtp_code"] = e.smtp_code
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
