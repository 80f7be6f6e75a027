#!/usr/bin/env python3
"""Generate the labelled DLP evaluation corpus (python3 standard library only).

    scripts/dlp_corpus.py --split test --out tests/dlp_corpus/test   # frozen, checked in
    scripts/dlp_corpus.py --split dev  --out target/dlp_corpus/dev   # tune on this one
    scripts/dlp_corpus.py --split test --attachments --out tests/dlp_corpus/attach-test
    scripts/dlp_corpus.py --split dev  --attachments --out target/dlp_corpus/attach-dev

`--attachments` writes a separate corpus (its own seeds, so the text splits above stay
byte-identical): the same kinds of identifiers inside PDF, DOCX, XLSX, PPTX, ODT, ODS,
RTF, CSV, TSV, HL7 v2, C-CDA, FHIR JSON/XML and ZIP (DOCX, XLSX, PDF and .eml inside)
attachments, each written here with the standard library (a small PDF writer, OOXML
and ODF as zip + XML), plus the text forms an independent probe found (SSN with dots,
Maestro cards, dashed ABA/NPI, lower-case MBI/DEA) and a hard negative for each.

Each split has its own seed AND its own template set, so tuning on `dev` cannot
overfit the wording of `test`. All values are synthetic: generated with valid (or,
for hard negatives, deliberately invalid) checksums, never taken from real people.

Output: one .eml per message plus manifest.json:
    {"messages": [{"file": "m0001.eml", "kind": "phi"|"clean"|"hard-negative",
                   "container": "...", "format": "pdf"|..., "labels": {"ssn": 1, ...}}]}
Labels count DISTINCT values per validated detector (ssn, npi, dea, mbi, card, aba).
"""

import argparse
import base64
import json
import os
import quopri
import random
import string
import sys

SEEDS = {"dev": 20240611, "test": 977331}

# ---------------------------------------------------------------- value generators


def luhn_check_digit(payload):
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


FAKE_SSNS = {"078051120", "219099999", "457555462", "123456789"}


def gen_ssn(r):
    while True:
        area = r.randint(1, 899)
        if area == 666:
            continue
        s = "%03d%02d%04d" % (area, r.randint(1, 99), r.randint(1, 9999))
        if s not in FAKE_SSNS:
            return s


def gen_npi(r):
    base = r.choice("12") + "".join(r.choice(string.digits) for _ in range(8))
    return base + luhn_check_digit("80840" + base)


DEA_FIRST = "ABCDEFGHJKLMPRSTUX"


def dea_check(digits6):
    d = [int(c) for c in digits6]
    return str((d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10)


def gen_dea(r):
    six = "".join(r.choice(string.digits) for _ in range(6))
    second = r.choice(string.ascii_uppercase + "9")
    return r.choice(DEA_FIRST) + second + six + dea_check(six)


MBI_ALPHA = [c for c in string.ascii_uppercase if c not in "SLOIBZ"]


def gen_mbi(r):
    a = lambda: r.choice(MBI_ALPHA)
    n = lambda: r.choice(string.digits)
    an = lambda: r.choice(MBI_ALPHA + list(string.digits))
    return r.choice("123456789") + a() + an() + n() + a() + an() + n() + a() + a() + n() + n()


def gen_card(r):
    kind = r.choice(["visa", "mc", "mc2", "amex", "disc"])
    if kind == "visa":
        prefix, length = "4", 16
    elif kind == "mc":
        prefix, length = str(r.randint(51, 55)), 16
    elif kind == "mc2":
        prefix, length = str(r.randint(2221, 2720)), 16
    elif kind == "amex":
        prefix, length = r.choice(["34", "37"]), 15
    else:
        prefix, length = "6011", 16
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn_check_digit(body)


ABA_PREFIXES = list(range(0, 13)) + list(range(21, 33)) + list(range(61, 73)) + [80]


def gen_aba(r):
    d = [int(c) for c in "%02d" % r.choice(ABA_PREFIXES)] + [r.randint(0, 9) for _ in range(6)]
    partial = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5])
    d.append((-partial) % 10)
    return "".join(map(str, d))


# ---------------------------------------------------------------- formatting


def fmt_ssn(r, v):
    return r.choice([f"{v[:3]}-{v[3:5]}-{v[5:]}", f"{v[:3]} {v[3:5]} {v[5:]}", f"{v[:3]}-{v[3:5]}-{v[5:]}"])


def fmt_card(r, v):
    if len(v) == 15:
        return r.choice([f"{v[:4]} {v[4:10]} {v[10:]}", v])
    sep = r.choice([" ", "-", ""])
    return sep.join(v[i:i + 4] for i in range(0, 16, 4))


def fmt_mbi(r, v):
    return r.choice([v, f"{v[:4]}-{v[4:7]}-{v[7:]}"])


# Context phrases per split: written separately so test wording is unseen in tuning.
PHRASES = {
    "dev": {
        "ssn": ["SSN: {v}", "Social Security number {v}", "her SSN is {v}", "{v}"],
        "npi": ["NPI {v}", "rendering provider NPI: {v}", "Provider NPI#: {v}"],
        "dea": ["DEA # {v}", "prescriber DEA registration {v}", "DEA: {v}", "DEA#:{v}"],
        "mbi": ["Medicare MBI {v}", "MBI: {v}", "Medicare ID {v}", "{v}"],
        "card": ["card number {v}", "Visa {v} exp 04/27", "{v}", "credit card: {v}"],
        "aba": ["routing number {v}", "ABA {v}", "bank routing {v}"],
    },
    "test": {
        "ssn": ["Soc Sec # {v}", "social security: {v}", "patient SSN {v} on file", "ID {v} (SSN)", "{v}"],
        "npi": ["ordering physician, NPI {v}", "NPI number: {v}", "referring provider {v}"],
        "dea": ["DEA number {v}", "DEA#{v}", "controlled substance registration {v}"],
        "mbi": ["beneficiary MBI {v}", "Medicare number: {v}", "the member's MBI is {v}", "{v}"],
        "card": ["Mastercard ending ... full number {v}", "please charge card {v}", "{v} (payment)", "CC {v} cvv on file"],
        "aba": ["ACH routing {v}", "wire to routing/transit {v}", "RTN: {v}"],
    },
}

FILLER = {
    "dev": [
        "Please find the update below and let me know if anything is missing.",
        "Following our call this morning, here are the details you asked for.",
        "We are preparing the monthly reconciliation and need to confirm a few items.",
        "The team will review this before Friday's meeting.",
        "Thanks again for your help with the transfer paperwork.",
    ],
    "test": [
        "As discussed, I am forwarding the record for your files.",
        "Can you double-check the entries below before we submit them?",
        "This is a follow-up on the intake from last Tuesday.",
        "Our office will be closed Monday; replies may be delayed.",
        "Let me know once the portal shows the change.",
    ],
}

HEALTH = {
    "dev": ["The patient was diagnosed with type 2 diabetes.", "Lab results attached for the referral.",
            "Discharge summary follows.", "Current medication list is below."],
    "test": ["She is being treated for hypertension.", "Biopsy results came back this week.",
             "The prescription was renewed at the clinic.", "Follow-up appointment with cardiology."],
}

BUSINESS = {
    "dev": [
        "Hi all,\n\nThe Q3 budget review moved to Thursday at 10:00. Please bring the updated vendor list.\n\nThanks,\nPriya",
        "Hello,\n\nInvoice 48213 for the printer lease is attached; payment terms are net 30.\n\nBest,\nAccounts",
        "Team,\n\nThe parking garage will be resurfaced next week. Use lot C until 2024-09-30.\n\nFacilities",
        "Hi Sam,\n\nRelease 3.14.2 went out last night. Build 20240611.3 is tagged.\n\nRegards,\nDev",
    ],
    "test": [
        "Good morning,\n\nLunch for the training session is ordered for 25 people. Menu attached.\n\nMaria",
        "Hello team,\n\nThe new badge readers are live on floors 2-4. Report problems to ext. 4410.\n\nSecurity",
        "Dear vendor,\n\nPO 7781-22 was approved on 2025-01-14. Ship to dock 3.\n\nPurchasing",
        "Hi,\n\nOur quarterly newsletter goes out on 3/15. Send article ideas by Friday.\n\nComms",
    ],
}


def hard_negative_lines(r):
    """Look-alikes that must not be reported by validated detectors."""
    bad_ssn_area = r.choice(["000", "666", "%d" % r.randint(900, 999)])
    group = "%02d" % (r.randint(0, 49) if bad_ssn_area.startswith("9") else r.randint(1, 99))
    card = gen_card(r)
    bad_card = card[:-1] + str((int(card[-1]) + r.randint(1, 9)) % 10)
    npi = gen_npi(r)
    bad_npi = npi[:-1] + str((int(npi[-1]) + r.randint(1, 9)) % 10)
    dea = gen_dea(r)
    bad_dea = dea[:-1] + str((int(dea[-1]) + r.randint(1, 9)) % 10)
    aba = gen_aba(r)
    bad_aba = aba[:-1] + str((int(aba[-1]) + r.randint(1, 9)) % 10)
    mbi = gen_mbi(r)
    bad_mbi = mbi[0] + r.choice("SLOIBZ") + mbi[2:]
    uuid = "%08x-%04x-%04x-%04x-%012x" % (r.getrandbits(32), r.getrandbits(16), r.getrandbits(16),
                                           r.getrandbits(16), r.getrandbits(48))
    digits_uuid = "%08d-%04d-%04d-%04d-%012d" % (r.randint(0, 10**8 - 1), r.randint(0, 9999), r.randint(0, 9999),
                                                 r.randint(0, 9999), r.randint(0, 10**12 - 1))
    return r.sample([
        f"Reference SSN field test value {bad_ssn_area}-{group}-{r.randint(1, 9999):04d} (invalid).",
        f"The old SSN placeholder 123-45-6789 must be replaced.",
        f"Card on the form {fmt_card(r, bad_card)} was declined as invalid.",
        f"NPI {bad_npi} failed the registry lookup.",
        f"DEA {bad_dea} is not a valid registration.",
        f"Routing number {bad_aba} was rejected by the bank.",
        f"Medicare MBI {bad_mbi} has an invalid letter.",
        f"Request id {uuid}.",
        f"Batch {digits_uuid} finished.",
        f"UPS tracking 1Z{r.randint(100, 999)}AA1{r.randint(10**10, 10**11 - 1)}.",
        f"USPS tracking 9400 1118 9922 {r.randint(1000, 9999)} {r.randint(1000, 9999)} {r.randint(10, 99)}.",
        f"FedEx tracking {r.randint(10**11, 10**12 - 1)}.",
        f"Ship to Cambridge MA {r.randint(10000, 99999)}-{r.randint(1000, 9999)}.",
        f"Upgrade to version {r.randint(1, 20)}.{r.randint(0, 30)}.{r.randint(0, 200)} tonight.",
        f"Logged at 2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:07Z, epoch {r.randint(1500000000, 1800000000)}.",
        f"Call (212) 555-01{r.randint(0, 99):02d} for the demo line.",
        f"Order number {r.randint(10**11, 10**12 - 1)} shipped.",
        f"Conference room code {r.randint(100000, 999999)}.",
    ], 6)


# ---------------------------------------------------------------- MIME containers


def wrap76(s):
    return "\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))


def header(r, subject, mid):
    return (f"From: sender{mid}@clinic.example\r\nTo: desk@partner.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{mid}@corpus.example>\r\nMIME-Version: 1.0\r\n")


def html_of(r, text):
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if r.random() < 0.4:
        esc = esc.replace("-", "&#45;")
    paras = "".join(f"<p>{p}</p>" for p in esc.split("\n") if p)
    return f"<html><body><div style=\"font-family:Arial\">{paras}</div></body></html>"


def container_message(r, container, subject, text, mid):
    h = header(r, subject, mid)
    if container == "plain":
        return h + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.replace("\n", "\r\n") + "\r\n"
    if container == "html":
        return h + "Content-Type: text/html; charset=utf-8\r\n\r\n" + html_of(r, text) + "\r\n"
    if container == "alternative":
        return (h + "Content-Type: multipart/alternative; boundary=\"ALT\"\r\n\r\n"
                "--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text.replace("\n", "\r\n") +
                "\r\n--ALT\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html_of(r, text) + "\r\n--ALT--\r\n")
    if container == "base64":
        b = base64.b64encode(text.encode()).decode()
        return (h + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                wrap76(b) + "\r\n")
    if container == "qp":
        q = quopri.encodestring(text.replace("\n", "\r\n").encode(), quotetabs=False).decode()
        if r.random() < 0.5:  # soft line breaks inside numbers are legal QP
            q = q.replace("-", "=2D")
        return (h + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                + q + "\r\n")
    if container == "attachment":
        b = base64.b64encode(text.encode()).decode()
        return (h + "Content-Type: multipart/mixed; boundary=\"MIX\"\r\n\r\n"
                "--MIX\r\nContent-Type: text/plain\r\n\r\nPlease see the attached notes.\r\n"
                "--MIX\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n" + wrap76(b) + "\r\n--MIX--\r\n")
    if container == "nested":
        inner = container_message(r, r.choice(["plain", "qp", "base64"]), "Fwd: " + subject, text, mid + "-inner")
        return (h + "Content-Type: multipart/mixed; boundary=\"NEST\"\r\n\r\n"
                "--NEST\r\nContent-Type: text/plain\r\n\r\nForwarding the message below.\r\n"
                "--NEST\r\nContent-Type: message/rfc822\r\n\r\n" + inner + "\r\n--NEST--\r\n")
    raise ValueError(container)


CONTAINERS = ["plain", "html", "alternative", "base64", "qp", "attachment", "nested"]

GEN = {"ssn": gen_ssn, "npi": gen_npi, "dea": gen_dea, "mbi": gen_mbi, "card": gen_card, "aba": gen_aba}
FMT = {"ssn": fmt_ssn, "card": fmt_card, "mbi": fmt_mbi}


def phi_message(r, split, mid):
    kinds = r.sample(list(GEN), r.randint(1, 3))
    labels = {}
    lines = [r.choice(FILLER[split])]
    for kind in kinds:
        for _ in range(r.choice([1, 1, 2])):
            raw = GEN[kind](r)
            shown = FMT.get(kind, lambda _r, v: v)(r, raw)
            lines.append(r.choice(PHRASES[split][kind]).format(v=shown))
            labels[kind] = labels.get(kind, 0) + 1
        if r.random() < 0.5:
            lines.append(r.choice(HEALTH[split]))
    lines.append(r.choice(FILLER[split]))
    r.shuffle(lines)
    text = "\n".join(lines) + "\n\nRegards,\nFront desk"
    return text, labels


def generate(split, out, n_phi, n_clean, n_hard):
    r = random.Random(SEEDS[split])
    os.makedirs(out, exist_ok=True)
    manifest = []
    i = 0

    def emit(kind, container, subject, text, labels):
        nonlocal i
        i += 1
        name = f"m{i:04d}.eml"
        raw = container_message(r, container, subject, text, f"{split}-{i}")
        with open(os.path.join(out, name), "w", newline="") as f:
            f.write(raw)
        manifest.append({"file": name, "kind": kind, "container": container, "labels": labels})

    for k in range(n_phi):
        text, labels = phi_message(r, split, k)
        emit("phi", CONTAINERS[k % len(CONTAINERS)], r.choice(["Records", "Intake", "Update", "Referral"]), text, labels)
    for k in range(n_clean):
        emit("clean", CONTAINERS[k % len(CONTAINERS)], r.choice(["Meeting", "Invoice", "Notice"]),
             r.choice(BUSINESS[split]), {})
    for k in range(n_hard):
        text = r.choice(BUSINESS[split]) + "\n\n" + "\n".join(hard_negative_lines(r))
        emit("hard-negative", CONTAINERS[k % len(CONTAINERS)], "Data quality report", text, {})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"split": split, "seed": SEEDS[split], "messages": manifest}, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=sorted(SEEDS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--phi", type=int, default=210)
    ap.add_argument("--clean", type=int, default=60)
    ap.add_argument("--hard", type=int, default=90)
    ap.add_argument("--attachments", action="store_true",
                    help="write the attachment corpus instead of the text split")
    a = ap.parse_args()
    if a.attachments:
        import dlp_corpus_attach
        dlp_corpus_attach.generate(sys.modules[__name__], a.split, a.out)
    else:
        generate(a.split, a.out, a.phi, a.clean, a.hard)


if __name__ == "__main__":
    main()
