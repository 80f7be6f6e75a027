"""Attachment corpus for scripts/dlp_corpus.py --attachments (standard library only).

Every message carries its identifiers inside one attachment of a given format; the
manifest's `format` says which, so tests/dlp_eval.rs reports precision and recall per
format. File writers are minimal but valid: a PDF writer (Helvetica, one BT/ET per
line, Flate-compressed content on half the files), OOXML and ODF as zip + XML, RTF
with hex escapes, HL7 v2 with the SSN in PID-19, C-CDA with the SSN OID, FHIR with
the us-ssn identifier system.
"""

import base64
import io
import json
import os
import random
import string
import zipfile
import zlib
from xml.sax.saxutils import escape as xesc

SEEDS = {"dev": 5550123, "test": 8675309}

FORMATS = ["pdf", "docx", "xlsx", "pptx", "odt", "ods", "rtf", "csv", "tsv", "hl7",
           "cda", "fhir-json", "fhir-xml", "zip-docx", "zip-xlsx", "zip-pdf", "zip-eml", "text"]

# Label phrases for attachments (own wording per split), {v} is the value.
PHRASES = {
    "dev": {
        "ssn": ["SSN: {v}", "Social Security number {v}"],
        "npi": ["NPI {v}", "Provider NPI#: {v}"],
        "dea": ["DEA # {v}", "DEA: {v}"],
        "mbi": ["Medicare MBI {v}", "MBI: {v}"],
        "card": ["card number {v}", "credit card: {v}"],
        "aba": ["routing number {v}", "ABA {v}"],
    },
    "test": {
        "ssn": ["patient SSN {v}", "social security: {v}"],
        "npi": ["NPI number: {v}", "ordering physician NPI {v}"],
        "dea": ["DEA number {v}", "prescriber DEA {v}"],
        "mbi": ["beneficiary MBI {v}", "Medicare number: {v}"],
        "card": ["please charge card {v}", "CC {v} on file"],
        "aba": ["ACH routing {v}", "RTN: {v}"],
    },
}

# Table column names per kind (spreadsheets and CSV give context through headers).
COLUMN = {"ssn": "SSN", "npi": "NPI", "dea": "DEA", "mbi": "Medicare MBI", "card": "Card number",
          "aba": "Routing number"}


def probe_forms(m, r, kind, raw):
    """The text forms the probe found, for the kinds that have one."""
    if kind == "ssn":
        return f"{raw[:3]}.{raw[3:5]}.{raw[5:]}"
    if kind == "aba":
        return r.choice([f"{raw[:3]}-{raw[3:6]}-{raw[6:]}", f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"])
    if kind == "npi":
        return r.choice([f"{raw[:3]}-{raw[3:6]}-{raw[6:]}", f"{raw[:5]}-{raw[5:]}"])
    if kind in ("mbi", "dea"):
        return raw.lower()
    return raw


def gen_maestro(m, r):
    body = "6759" + "".join(r.choice(string.digits) for _ in range(11))
    return body + m.luhn_check_digit(body)


def values(m, r, split):
    """(kind, shown value, phrase line) for one to three kinds, one or two values each."""
    out = []
    for kind in r.sample(list(m.GEN), r.randint(1, 3)):
        for _ in range(r.choice([1, 1, 2])):
            if kind == "card" and r.random() < 0.3:
                raw = gen_maestro(m, r)
            else:
                raw = m.GEN[kind](r)
            if r.random() < 0.3:
                shown = probe_forms(m, r, kind, raw)
            else:
                shown = m.FMT.get(kind, lambda _r, v: v)(r, raw)
            out.append((kind, raw, shown, r.choice(PHRASES[split][kind]).format(v=shown)))
    return out


def hard_lines(m, r, k):
    """Look-alikes (the probe's forms included) that must not be reported. Even `k`:
    invalid values beside their label; odd `k`: valid-checksum values with no label
    near them (mixing both would put a label within a valid value's context window,
    which no scanner can tell from real PHI)."""
    ssn = m.gen_ssn(r)
    if k % 2 == 0:
        bad_area = r.choice(["000", "666", "9%02d" % r.randint(0, 49)])
        maestro = gen_maestro(m, r)
        bad_maestro = maestro[:-1] + str((int(maestro[-1]) + r.randint(1, 9)) % 10)
        aba = m.gen_aba(r)
        bad_aba = aba[:-1] + str((int(aba[-1]) + r.randint(1, 9)) % 10)
        npi = m.gen_npi(r)
        bad_npi = npi[:-1] + str((int(npi[-1]) + r.randint(1, 9)) % 10)
        dea = m.gen_dea(r)
        bad_dea = dea[:-1] + str((int(dea[-1]) + r.randint(1, 9)) % 10)
        return m.hard_negative_lines(r)[:3] + r.sample([
            f"Invalid value {bad_area}.{ssn[3:5]}.{ssn[5:]} in the SSN field.",
            f"Card {bad_maestro} was declined.",
            f"Routing number {bad_aba[:3]}-{bad_aba[3:6]}-{bad_aba[6:]} was rejected.",
            f"NPI {bad_npi[:3]}-{bad_npi[3:6]}-{bad_npi[6:]} failed the lookup.",
            f"DEA {bad_dea.lower()} is not on file.",
        ], 4)
    aba = m.gen_aba(r)
    npi = m.gen_npi(r)
    dea = m.gen_dea(r)
    mbi = m.gen_mbi(r)
    return r.sample([
        f"Server {r.randint(10, 99)}.{ssn[:3]}.{ssn[3:5]}.{ssn[5:]}.{r.randint(1, 9)} rebooted.",
        f"Reference {aba[:3]}-{aba[3:6]}-{aba[6:]} for the shipment.",
        f"Call the office at {npi[:3]}-{npi[3:6]}-{npi[6:]} after noon.",
        f"Session token {dea.lower()} expired.",
        f"Download link id {mbi.lower()} is single use.",
        f"Invoice INV-{r.randint(10**5, 10**6 - 1)} total ${r.randint(100, 9999)}.{r.randint(0, 99):02d}.",
        f"Fax {r.randint(201, 989)}-555-01{r.randint(0, 99):02d}.",
        f"Order number {r.randint(10**11, 10**12 - 1)} shipped.",
    ], 6)


# ---------------------------------------------------------------- file writers


def pdf(lines, compress):
    """A valid PDF, one page per 40 lines, one BT/ET per line (so extraction keeps
    line breaks). The xref offsets are computed."""
    pages = [lines[i:i + 40] for i in range(0, max(len(lines), 1), 40)] or [[]]
    objs = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
            3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"}
    kids = []
    for i, page in enumerate(pages):
        pid, cid = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{pid} 0 R")
        ops = []
        for k, line in enumerate(page):
            t = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"BT /F1 10 Tf 50 {760 - 18 * k} Td ({t}) Tj ET")
        content = "\n".join(ops).encode("latin-1", "replace")
        if compress:
            data = zlib.compress(content)
            head = f"<< /Length {len(data)} /Filter /FlateDecode >>".encode()
        else:
            data = content
            head = f"<< /Length {len(data)} >>".encode()
        objs[cid] = head + b"\nstream\n" + data + b"\nendstream"
        objs[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
                     f"<< /Font << /F1 3 0 R >> >> /Contents {cid} 0 R >>").encode()
    objs[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for oid in sorted(objs):
        offsets[oid] = len(out)
        out += f"{oid} 0 obj\n".encode() + objs[oid] + b"\nendobj\n"
    xref = len(out)
    n = max(objs) + 1
    out += f"xref\n0 {n}\n0000000000 65535 f \n".encode()
    for oid in range(1, n):
        out += f"{offsets.get(oid, 0):010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {n} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def zip_bytes(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx(lines):
    paras = "".join(f"<w:p><w:r><w:t xml:space=\"preserve\">{xesc(l)}</w:t></w:r></w:p>" for l in lines)
    return zip_bytes([
        ("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>'),
        ("word/document.xml", f'<?xml version="1.0"?><w:document {W}><w:body>{paras}</w:body></w:document>'),
    ])


def col(i):
    return string.ascii_uppercase[i]


def xlsx(rows):
    shared, sheet = [], []
    for ri, row in enumerate(rows, 1):
        cells = []
        for ci, v in enumerate(row):
            ref = f"{col(ci)}{ri}"
            if v.isdigit() and len(v) < 16:
                cells.append(f'<c r="{ref}"><v>{v}</v></c>')
            else:
                cells.append(f'<c r="{ref}" t="s"><v>{len(shared)}</v></c>')
                shared.append(f"<si><t>{xesc(v)}</t></si>")
        sheet.append(f'<row r="{ri}">{"".join(cells)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    return zip_bytes([
        ("[Content_Types].xml", "<Types/>"),
        ("xl/workbook.xml", f"<workbook {ns}/>"),
        ("xl/sharedStrings.xml", f"<sst {ns}>{''.join(shared)}</sst>"),
        ("xl/worksheets/sheet1.xml", f"<worksheet {ns}><sheetData>{''.join(sheet)}</sheetData></worksheet>"),
    ])


def pptx(lines):
    slides = [lines[i:i + 8] for i in range(0, len(lines), 8)]
    entries = [("[Content_Types].xml", "<Types/>"), ("ppt/presentation.xml", "<p:presentation xmlns:p=\"p\"/>")]
    for n, sl in enumerate(slides, 1):
        body = "".join(f"<a:p><a:r><a:t>{xesc(l)}</a:t></a:r></a:p>" for l in sl)
        entries.append((f"ppt/slides/slide{n}.xml",
                        f'<p:sld xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" xmlns:p="p"><p:txBody>{body}</p:txBody></p:sld>'))
    return zip_bytes(entries)


ODF_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
          'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')


def odt(lines):
    paras = "".join(f"<text:p>{xesc(l)}</text:p>" for l in lines)
    return zip_bytes([
        ("mimetype", "application/vnd.oasis.opendocument.text"),
        ("META-INF/manifest.xml", "<manifest/>"),
        ("content.xml", f"<office:document-content {ODF_NS}><office:body><office:text>{paras}</office:text></office:body></office:document-content>"),
    ])


def ods(rows):
    trs = "".join("<table:table-row>" + "".join(
        f"<table:table-cell><text:p>{xesc(v)}</text:p></table:table-cell>" for v in row) + "</table:table-row>"
        for row in rows)
    return zip_bytes([
        ("mimetype", "application/vnd.oasis.opendocument.spreadsheet"),
        ("META-INF/manifest.xml", "<manifest/>"),
        ("content.xml", f"<office:document-content {ODF_NS}><office:body><office:spreadsheet><table:table>{trs}</table:table></office:spreadsheet></office:body></office:document-content>"),
    ])


def rtf(lines):
    def enc(l):
        return "".join("\\'2d" if c == "-" else ("\\" + c if c in "\\{}" else c) for c in l)
    body = "\\par\n".join(enc(l) for l in lines)
    return ("{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Times New Roman;}}{\\info{\\author Front desk}}\\f0\\fs20 "
            + body + "\\par\n}").encode()


def table(rows, sep):
    def q(v):
        return '"' + v.replace('"', '""') + '"' if (sep in v or '"' in v) else v
    return ("\r\n".join(sep.join(q(v) for v in row) for row in rows) + "\r\n").encode()


def hl7(m, r, vals, notes, mid):
    """ORU^R01 with the patient's SSN (if any) in PID-19 and the rest as NTE notes."""
    ssn = next((raw for kind, raw, _, _ in vals if kind == "ssn"), "")
    segs = [f"MSH|^~\\&|LAB|HOSP|EHR|CLINIC|2024010112{r.randint(10, 59)}||ORU^R01|{mid}|P|2.5",
            f"PID|1||MRN{r.randint(10**6, 10**7 - 1)}^^^HOSP^MR||DOE^JANE||19{r.randint(40, 99)}0{r.randint(1, 9)}1{r.randint(0, 9)}|F|||||||||||{ssn}"]
    k = 0
    for kind, raw, shown, line in vals:
        if kind == "ssn" and raw == ssn:
            continue
        k += 1
        segs.append(f"NTE|{k}||{line}")
    for line in notes:
        k += 1
        segs.append(f"NTE|{k}||{line}")
    return ("\r".join(segs) + "\r").encode()


def cda(vals, notes):
    ssn = next((raw for kind, raw, _, _ in vals if kind == "ssn"), None)
    ids = f'<id root="2.16.840.1.113883.4.1" extension="{ssn}"/>' if ssn else ""
    paras = "".join(f"<paragraph>{xesc(line)}</paragraph>" for kind, raw, _, line in vals if not (kind == "ssn" and raw == ssn))
    paras += "".join(f"<paragraph>{xesc(l)}</paragraph>" for l in notes)
    return (f'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole>{ids}'
            f'<id root="1.2.840.114350" extension="MRN7734"/><patient><name><given>Jane</given><family>Doe</family></name>'
            f'<birthTime value="19700102"/></patient></patientRole></recordTarget><component><structuredBody><component>'
            f'<section><title>Notes</title><text>{paras}</text></section></component></structuredBody></component></ClinicalDocument>').encode()


def fhir_json(vals, notes):
    ssn = next((raw for kind, raw, _, _ in vals if kind == "ssn"), None)
    patient = {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1970-01-02"}
    if ssn:
        patient["identifier"] = [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}]
    comm = {"resourceType": "Communication", "status": "completed",
            "payload": [{"contentString": line} for kind, raw, _, line in vals if not (kind == "ssn" and raw == ssn)]
            + [{"contentString": l} for l in notes]}
    return json.dumps({"resourceType": "Bundle", "type": "collection",
                       "entry": [{"resource": patient}, {"resource": comm}]}, indent=1).encode()


def fhir_xml(vals, notes):
    ssn = next((raw for kind, raw, _, _ in vals if kind == "ssn"), None)
    ident = (f'<identifier><system value="http://hl7.org/fhir/sid/us-ssn"/><value value="{ssn}"/></identifier>'
             if ssn else "")
    pay = "".join(f'<payload><contentString value="{xesc(line, {chr(34): "&quot;"})}"/></payload>'
                  for kind, raw, _, line in vals if not (kind == "ssn" and raw == ssn))
    pay += "".join(f'<payload><contentString value="{xesc(l, {chr(34): "&quot;"})}"/></payload>' for l in notes)
    return (f'<Bundle xmlns="http://hl7.org/fhir"><entry><resource><Patient>{ident}<name><family value="Doe"/>'
            f'<given value="Jane"/></name><birthDate value="1970-01-02"/></Patient></resource></entry>'
            f'<entry><resource><Communication><status value="completed"/>{pay}</Communication></resource></entry></Bundle>').encode()


def rows_of(vals, notes):
    rows = [["Record", "Field", "Value", "Notes"]]
    for i, (kind, raw, shown, line) in enumerate(vals, 1):
        rows.append([str(i), COLUMN[kind], shown, ""])
    for l in notes:
        rows.append([str(len(rows)), "", "", l])
    return rows


def attachment(m, r, fmt, vals, notes, mid):
    """(file name, content type, bytes) of one attachment in `fmt`."""
    lines = [line for _, _, _, line in vals] + notes
    r.shuffle(lines)
    if fmt == "pdf":
        return "results.pdf", "application/pdf", pdf(lines, r.random() < 0.5)
    if fmt == "docx":
        return "referral.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", docx(lines)
    if fmt == "xlsx":
        return "claims.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", xlsx(rows_of(vals, notes))
    if fmt == "pptx":
        return "review.pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation", pptx(lines)
    if fmt == "odt":
        return "letter.odt", "application/vnd.oasis.opendocument.text", odt(lines)
    if fmt == "ods":
        return "list.ods", "application/vnd.oasis.opendocument.spreadsheet", ods(rows_of(vals, notes))
    if fmt == "rtf":
        return "summary.rtf", "application/rtf", rtf(lines)
    if fmt == "csv":
        return "export.csv", "text/csv", table(rows_of(vals, notes), ",")
    if fmt == "tsv":
        return "export.tsv", "text/tab-separated-values", table(rows_of(vals, notes), "\t")
    if fmt == "hl7":
        # Recognised by MSH| even in a .txt file.
        return r.choice(["oru.hl7", "result.txt"]), "application/octet-stream", hl7(m, r, vals, notes, mid)
    if fmt == "cda":
        return "ccd.xml", "application/xml", cda(vals, notes)
    if fmt == "fhir-json":
        return "bundle.json", "application/fhir+json", fhir_json(vals, notes)
    if fmt == "fhir-xml":
        return "bundle.xml", "application/fhir+xml", fhir_xml(vals, notes)
    if fmt == "zip-docx":
        return "batch.zip", "application/zip", zip_bytes([("readme.txt", "Batch export."), ("referral.docx", docx(lines))])
    if fmt == "zip-xlsx":
        return "batch.zip", "application/zip", zip_bytes([("claims.xlsx", xlsx(rows_of(vals, notes)))])
    if fmt == "zip-pdf":
        inner = zip_bytes([("results.pdf", pdf(lines, True))])
        return "archive.zip", "application/zip", zip_bytes([("nested.zip", inner)])
    if fmt == "zip-eml":
        body = "\r\n".join(lines)
        eml = (f"From: a@clinic.example\r\nSubject: Fwd: records\r\nContent-Type: text/plain\r\n\r\n{body}\r\n")
        return "forwarded.zip", "application/zip", zip_bytes([("message.eml", eml)])
    raise ValueError(fmt)


def message(m, r, fmt, text, att, mid):
    h = m.header(r, "Records", mid)
    if fmt == "text":
        return h + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.replace("\n", "\r\n") + "\r\n"
    name, ctype, data = att
    b = m.wrap76(base64.b64encode(data).decode())
    return (h + "Content-Type: multipart/mixed; boundary=\"ATT\"\r\n\r\n"
            "--ATT\r\nContent-Type: text/plain\r\n\r\nPlease see the attachment.\r\n"
            f"--ATT\r\nContent-Type: {ctype}; name=\"{name}\"\r\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b + "\r\n--ATT--\r\n")


def generate(m, split, out, per_format=12, hard_per_format=6):
    r = random.Random(SEEDS[split])
    os.makedirs(out, exist_ok=True)
    manifest = []
    i = 0
    for fmt in FORMATS:
        for k in range(per_format + hard_per_format):
            i += 1
            mid = f"{split}-a{i}"
            if k < per_format:
                kind = "phi"
                vals = values(m, r, split)
                notes = [r.choice(m.FILLER[split])]
                labels = {}
                for kd, _, _, _ in vals:
                    labels[kd] = labels.get(kd, 0) + 1
            else:
                kind = "hard-negative"
                vals = []
                notes = hard_lines(m, r, k)
                labels = {}
            text = "\n".join([line for _, _, _, line in vals] + notes)
            att = None if fmt == "text" else attachment(m, r, fmt, vals, notes, mid)
            name = f"a{i:04d}.eml"
            with open(os.path.join(out, name), "w", newline="") as f:
                f.write(message(m, r, fmt, text, att, mid))
            manifest.append({"file": name, "kind": kind, "container": "attachment", "format": fmt,
                             "labels": labels})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"split": "attach-" + split, "seed": SEEDS[split], "messages": manifest}, f, indent=1)
        f.write("\n")
