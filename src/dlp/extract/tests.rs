//! Extractors on generated files, and hostile files: bombs, loops, deep nesting,
//! truncation. Every case must end with its finding, never a panic or hang.

use super::*;
use crate::dlp::{Confidence, DlpConfig, ScanResult, Scanner};
use std::io::Write;

/// A minimal PDF: one page per text (Helvetica, WinAnsi), optional extra objects
/// and trailer entries. Offsets in the xref table are computed, so lopdf reads it
/// without repair.
pub(crate) fn pdf(
    pages: &[&str],
    extra: &[(u32, String)],
    root_extra: &str,
    trailer_extra: &str,
) -> Vec<u8> {
    let n = pages.len() as u32;
    let mut objs: Vec<(u32, Vec<u8>)> = Vec::new();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    objs.push((
        1,
        format!("<< /Type /Catalog /Pages 2 0 R {root_extra} >>").into_bytes(),
    ));
    objs.push((
        2,
        format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes(),
    ));
    objs.push((
        3,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    ));
    for (i, text) in pages.iter().enumerate() {
        let page = 4 + 2 * i as u32;
        let content = if text.is_empty() {
            String::new()
        } else {
            let esc = text
                .replace('\\', "\\\\")
                .replace('(', "\\(")
                .replace(')', "\\)");
            format!("BT /F1 12 Tf 72 720 Td ({esc}) Tj ET")
        };
        objs.push((
            page,
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                page + 1
            )
            .into_bytes(),
        ));
        objs.push((
            page + 1,
            format!(
                "<< /Length {} >>\nstream\n{content}\nendstream",
                content.len() + 1
            )
            .into_bytes(),
        ));
    }
    for (id, body) in extra {
        objs.push((*id, body.clone().into_bytes()));
    }
    objs.sort_by_key(|(id, _)| *id);
    let mut out = b"%PDF-1.4\n".to_vec();
    let max = objs.iter().map(|(id, _)| *id).max().unwrap_or(0);
    let mut offsets = vec![0usize; max as usize + 1];
    for (id, body) in &objs {
        offsets[*id as usize] = out.len();
        out.extend_from_slice(format!("{id} 0 obj\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", max + 1).as_bytes());
    for off in offsets.iter().skip(1) {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R {trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n",
            max + 1
        )
        .as_bytes(),
    );
    out
}

pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = ::zip::write::SimpleFileOptions::default()
        .compression_method(::zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub(crate) fn docx(body: &str) -> Vec<u8> {
    let doc = format!(
        r#"<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>{body}</w:t></w:r></w:p></w:body></w:document>"#
    );
    zip_of(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("word/document.xml", doc.as_bytes()),
        (
            "word/footer1.xml",
            b"<w:ftr xmlns:w=\"x\"><w:p><w:r><w:t>Confidential</w:t></w:r></w:p></w:ftr>",
        ),
    ])
}

pub(crate) fn xlsx(rows: &[&[&str]]) -> Vec<u8> {
    let mut shared = Vec::new();
    let mut sheet = String::from("<worksheet><sheetData>");
    for (r, row) in rows.iter().enumerate() {
        sheet.push_str(&format!("<row r=\"{}\">", r + 1));
        for (c, v) in row.iter().enumerate() {
            let col = char::from(b'A' + c as u8);
            if v.chars().all(|c| c.is_ascii_digit()) {
                sheet.push_str(&format!("<c r=\"{col}{}\"><v>{v}</v></c>", r + 1));
            } else {
                sheet.push_str(&format!(
                    "<c r=\"{col}{}\" t=\"s\"><v>{}</v></c>",
                    r + 1,
                    shared.len()
                ));
                shared.push(format!("<si><t>{v}</t></si>"));
            }
        }
        sheet.push_str("</row>");
    }
    sheet.push_str("</sheetData></worksheet>");
    let sst = format!("<sst>{}</sst>", shared.concat());
    zip_of(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("xl/workbook.xml", b"<workbook/>"),
        ("xl/sharedStrings.xml", sst.as_bytes()),
        ("xl/worksheets/sheet1.xml", sheet.as_bytes()),
    ])
}

fn blob(name: &str, bytes: Vec<u8>) -> Blob {
    Blob {
        part: 1,
        name: Some(name.to_string()),
        content_type: "application/octet-stream".into(),
        bytes,
    }
}

fn scan_with(limits: Limits, blobs: Vec<Blob>) -> ScanResult {
    let cfg = DlpConfig {
        limits,
        ..DlpConfig::default()
    };
    let view = crate::message::TextView {
        blobs,
        ..Default::default()
    };
    Scanner::new(&cfg).unwrap().scan(&view)
}

fn scan(blobs: Vec<Blob>) -> ScanResult {
    scan_with(Limits::default(), blobs)
}

fn origins(r: &ScanResult, detector: &str) -> Vec<String> {
    r.findings
        .iter()
        .filter(|f| f.detector == detector && f.confidence >= Confidence::Medium)
        .filter_map(|f| f.origin.clone())
        .collect()
}

fn has_flag(r: &ScanResult, detector: &str, reason_part: &str) -> bool {
    r.findings
        .iter()
        .any(|f| f.detector == detector && f.masked.contains(reason_part))
}

const SSN: &str = "SSN 536-22-8901";

#[test]
fn pdf_pages_forms_and_annotations() {
    let field = "<< /FT /Tx /T (patient_ssn) /V (536-22-8901) >>".to_string();
    let annot =
        "<< /Type /Annot /Subtype /Text /Rect [0 0 1 1] /Contents (Card 4111 1111 1111 1111) >>"
            .to_string();
    let mut p = pdf(
        &[
            "Lab results, page one",
            "Patient SSN 219-09-9999 bad, real SSN 536-22-8902",
        ],
        &[(20, format!("[{}]", "21 0 R")), (21, field), (22, annot)],
        "/AcroForm << /Fields 20 0 R >>",
        "",
    );
    // Attach the annotation to page 1.
    let s = String::from_utf8_lossy(&p)
        .replace("/Contents 5 0 R >>", "/Contents 5 0 R /Annots [22 0 R] >>");
    p = pdf_fix_xref(s.into_bytes());
    let r = scan(vec![blob("results.pdf", p)]);
    assert!(
        origins(&r, "ssn").contains(&"attachment:results.pdf page 2".to_string()),
        "{:?}",
        r.findings
    );
    assert!(origins(&r, "ssn").contains(&"attachment:results.pdf form fields".to_string()));
    assert!(origins(&r, "card").contains(&"attachment:results.pdf page 1 annotations".to_string()));
    assert_eq!(r.count_at_least("ssn", Confidence::Medium), 2);
}

/// Rebuild the xref table after editing a generated PDF.
fn pdf_fix_xref(b: Vec<u8>) -> Vec<u8> {
    let s = String::from_utf8_lossy(&b).into_owned();
    let body_end = s.find("xref\n").unwrap();
    let body = &s[..body_end];
    let mut offsets = Vec::new();
    let mut i = 0;
    while let Some(p) = body[i..].find(" 0 obj\n") {
        let at = i + p;
        let start = body[..at].rfind('\n').map_or(0, |n| n + 1);
        let id: usize = body[start..at].parse().unwrap();
        offsets.push((id, start));
        i = at + 7;
    }
    offsets.sort();
    let max = offsets.last().unwrap().0;
    let mut out = body.to_string();
    out.push_str(&format!("xref\n0 {}\n0000000000 65535 f \n", max + 1));
    for id in 1..=max {
        let off = offsets
            .iter()
            .find(|(i, _)| *i == id)
            .map_or(0, |(_, o)| *o);
        out.push_str(&format!("{off:010} 00000 n \n"));
    }
    out.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{body_end}\n%%EOF\n",
        max + 1
    ));
    out.into_bytes()
}

#[test]
fn pdf_without_text_layer_is_an_image() {
    let r = scan(vec![blob("scan.pdf", pdf(&["", ""], &[], "", ""))]);
    assert!(has_flag(&r, IMAGE, "image"), "{:?}", r.findings);
}

#[test]
fn encrypted_pdf_is_flagged() {
    let p = pdf(
        &[SSN],
        &[(
            30,
            "<< /Filter /Standard /V 1 /R 2 /O <00> /U <00> /P -4 >>".into(),
        )],
        "",
        "/Encrypt 30 0 R /ID [<01> <01>]",
    );
    let r = scan(vec![blob("locked.pdf", p)]);
    assert!(r.counts.contains_key(ENCRYPTED), "{:?}", r.findings);
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn pdf_compression_bomb_is_refused() {
    let bomb = deflate(&vec![b' '; 4 << 20]);
    let mut obj = format!(
        "<< /Length {} /Filter /FlateDecode >>\nstream\n",
        bomb.len()
    )
    .into_bytes();
    obj.extend_from_slice(&bomb);
    obj.extend_from_slice(b"\nendstream");
    let mut p = pdf(&[SSN], &[], "", "");
    // Put the bomb in front of the xref (it needs no reference to be decoded by a
    // careless reader that inflates every stream).
    let at = memfind(&p, b"xref\n").unwrap();
    let mut q = p[..at].to_vec();
    q.extend_from_slice(b"40 0 obj\n");
    q.extend_from_slice(&obj);
    q.extend_from_slice(b"\nendobj\n");
    q.extend_from_slice(&p[at..]);
    p = q;
    let limits = Limits {
        max_decompressed_bytes: 1 << 20,
        ..Limits::default()
    };
    let r = scan_with(limits, vec![blob("bomb.pdf", p)]);
    assert!(
        has_flag(&r, UNSCANNABLE, "max_decompressed_bytes"),
        "{:?}",
        r.findings
    );
}

#[test]
fn pdf_reference_loops_end() {
    // A field whose Kids contain itself, and a page tree whose Kids point back up.
    let p = pdf(
        &[SSN],
        &[
            (20, "[21 0 R]".into()),
            (21, "<< /T (a) /V (x) /Kids [21 0 R 22 0 R] >>".into()),
            (22, "<< /T (b) /Kids [21 0 R] /Parent 21 0 R >>".into()),
        ],
        "/AcroForm << /Fields 20 0 R >>",
        "",
    );
    let s = String::from_utf8_lossy(&p).replace("/Kids [4 0 R]", "/Kids [4 0 R 2 0 R]");
    let r = scan(vec![blob("loop.pdf", pdf_fix_xref(s.into_bytes()))]);
    assert_eq!(
        r.count_at_least("ssn", Confidence::Medium),
        1,
        "{:?}",
        r.findings
    );
}

#[test]
fn docx_inside_zip_names_its_path() {
    let z = zip_of(&[("claims.docx", &docx(SSN)), ("readme.txt", b"nothing here")]);
    let r = scan(vec![blob("batch.zip", z)]);
    assert_eq!(
        origins(&r, "ssn"),
        vec!["attachment:batch.zip/claims.docx document".to_string()]
    );
    let red: Vec<String> = r.sources(false).into_keys().collect();
    assert_eq!(
        red,
        vec!["attachment:part 1 (zip)/entry 1 (docx) document".to_string()]
    );
}

#[test]
fn xlsx_headers_give_context() {
    let x = xlsx(&[
        &["Name", "SSN", "DOB"],
        &["Doe, Jane", "536228901", "01/02/1970"],
    ]);
    let z = zip_of(&[("claims.xlsx", &x)]);
    let r = scan(vec![blob("batch.zip", z)]);
    assert_eq!(
        origins(&r, "ssn"),
        vec!["attachment:batch.zip/claims.xlsx sheet 1".to_string()]
    );
    assert_eq!(r.count_at_least("dob", Confidence::Medium), 1);
}

#[test]
fn pptx_odt_rtf_csv() {
    let pptx = zip_of(&[
        ("ppt/presentation.xml", b"<p/>"),
        ("ppt/slides/slide1.xml", b"<p:sld xmlns:a=\"a\" xmlns:p=\"p\"><a:p><a:r><a:t>SSN 536-22-8901</a:t></a:r></a:p></p:sld>"),
    ]);
    let odt = zip_of(&[
        ("mimetype", b"application/vnd.oasis.opendocument.text"),
        ("content.xml", b"<office:document-content xmlns:office=\"o\" xmlns:text=\"t\"><office:body><text:p>SSN 536-22-8903</text:p></office:body></office:document-content>"),
    ]);
    let ods = zip_of(&[
        ("mimetype", b"application/vnd.oasis.opendocument.spreadsheet"),
        ("content.xml", b"<o:c xmlns:table=\"t\" xmlns:text=\"x\" xmlns:o=\"o\"><table:table><table:table-row><table:table-cell><text:p>SSN</text:p></table:table-cell></table:table-row><table:table-row><table:table-cell><text:p>536228904</text:p></table:table-cell></table:table-row></table:table></o:c>"),
    ]);
    let rtf = br"{\rtf1\ansi{\fonttbl{\f0 Arial;}}\f0 Patient SSN 536\'2d22\'2d8905\par}".to_vec();
    let csv = b"id,ssn,notes\n1,536228906,ok\n".to_vec();
    let r = scan(vec![
        blob("deck.pptx", pptx),
        blob("letter.odt", odt),
        blob("list.ods", ods),
        blob("note.rtf", rtf),
        blob("list.csv", csv),
    ]);
    let o = origins(&r, "ssn");
    for want in [
        "attachment:deck.pptx slide 1",
        "attachment:letter.odt document",
        "attachment:list.ods sheet 1",
        "attachment:note.rtf",
        "attachment:list.csv",
    ] {
        assert!(o.contains(&want.to_string()), "{want}: {o:?}");
    }
}

pub(crate) const HL7: &str = "MSH|^~\\&|LAB|HOSP|EHR|CLINIC|202401011200||ORU^R01|123|P|2.5\rPID|1||MRN12345^^^HOSP^MR~536228901^^^SSA^SS||DOE^JANE^Q||19700102|F|||1 Main St^^Boston^MA|||||||ACC1|536-22-8907\rOBX|1|TX|||Normal\r";

#[test]
fn hl7_fields_are_structure_aware() {
    let r = scan(vec![blob("adt.txt", HL7.as_bytes().to_vec())]);
    let o = origins(&r, "ssn");
    assert!(
        o.contains(&"attachment:adt.txt hl7:PID-19".to_string()),
        "{o:?}"
    );
    assert!(
        o.contains(&"attachment:adt.txt hl7:PID-3".to_string()),
        "{o:?}"
    );
    assert!(origins(&r, "dob").contains(&"attachment:adt.txt hl7:PID-7".to_string()));
    assert!(origins(&r, "patient-name").contains(&"attachment:adt.txt hl7:PID-5".to_string()));
    assert!(r.hipaa_phi, "an HL7 PID segment is PHI");
}

pub(crate) const CDA: &str = r#"<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole><id root="2.16.840.1.113883.4.1" extension="536-22-8908"/><id root="1.2.3" extension="MRN998877"/><patient><name><given>Jane</given><family>Doe</family></name><birthTime value="19700102"/></patient></patientRole></recordTarget></ClinicalDocument>"#;

pub(crate) const FHIR_JSON: &str = r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"http://hl7.org/fhir/sid/us-ssn","value":"536228909"}],"name":[{"family":"Doe","given":["Jane"]}],"birthDate":"1970-01-02"}}]}"#;

const FHIR_XML: &str = r#"<Patient xmlns="http://hl7.org/fhir"><identifier><system value="http://hl7.org/fhir/sid/us-ssn"/><value value="536228911"/></identifier><name><family value="Doe"/><given value="Jane"/></name><birthDate value="1970-01-02"/></Patient>"#;

#[test]
fn cda_and_fhir() {
    let r = scan(vec![
        blob("ccd.xml", CDA.as_bytes().to_vec()),
        blob("patient.json", FHIR_JSON.as_bytes().to_vec()),
        blob("patient.xml", FHIR_XML.as_bytes().to_vec()),
    ]);
    let o = origins(&r, "ssn");
    for want in [
        "attachment:ccd.xml cda:patientRole/id",
        "attachment:patient.json fhir:Patient.identifier",
        "attachment:patient.xml fhir:Patient.identifier",
    ] {
        assert!(o.contains(&want.to_string()), "{want}: {o:?}");
    }
    assert!(origins(&r, "dob").contains(&"attachment:ccd.xml cda:patient/birthTime".to_string()));
    assert!(origins(&r, "mrn").contains(&"attachment:ccd.xml cda:patientRole/id".to_string()));
    assert_eq!(
        r.count_at_least("patient-name", Confidence::High),
        1,
        "same name, one value"
    );
}

#[test]
fn images_and_encrypted_office() {
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM");
    let mut cfb = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1".to_vec();
    cfb.extend("EncryptedPackage".bytes().flat_map(|c| [c, 0]));
    let r = scan(vec![
        blob("x.png", b"\x89PNG\r\n\x1a\n".to_vec()),
        blob("ct.dcm", dicom),
        blob("secret.docx", cfb),
    ]);
    assert_eq!(r.counts.get(IMAGE), Some(&2));
    assert_eq!(r.counts.get(ENCRYPTED), Some(&1));
}

#[test]
fn zip_bomb_is_refused() {
    let z = zip_of(&[("zeros.txt", &vec![b'0'; 8 << 20])]);
    assert!(z.len() < 64 * 1024);
    let r = scan(vec![blob("bomb.zip", z)]);
    assert!(has_flag(&r, UNSCANNABLE, "max_ratio"), "{:?}", r.findings);
}

#[test]
fn deep_nesting_stops_at_max_depth() {
    let mut z = zip_of(&[("inner.txt", format!("deepest {SSN}").as_bytes())]);
    for level in 0..5 {
        let name = format!("level{level}.zip");
        let text = format!("SSN 536-22-89{:02}", 20 + level);
        z = zip_of(&[(&name, &z), ("note.txt", text.as_bytes())]);
    }
    let r = scan(vec![blob("nest.zip", z)]);
    assert!(has_flag(&r, UNSCANNABLE, "max_depth"), "{:?}", r.findings);
    // The levels within the limit are still read.
    assert_eq!(r.count_at_least("ssn", Confidence::Medium), 3);
}

#[test]
fn encrypted_zip_entry_is_flagged() {
    let mut z = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = ::zip::write::SimpleFileOptions::default()
        .compression_method(::zip::CompressionMethod::Stored);
    z.start_file("secret.txt", opts).unwrap();
    z.write_all(SSN.as_bytes()).unwrap();
    let mut b = z.finish().unwrap().into_inner();
    // Set the "encrypted" flag in the local and central headers.
    b[6] |= 1;
    let c = memfind(&b, b"PK\x01\x02").unwrap();
    b[c + 8] |= 1;
    let r = scan(vec![blob("locked.zip", b)]);
    assert!(r.counts.contains_key(ENCRYPTED), "{:?}", r.findings);
}

#[test]
fn too_many_entries_and_wall_time() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}.txt")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let z = zip_of(&entries);
    let few = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let r = scan_with(few, vec![blob("many.zip", z.clone())]);
    assert!(has_flag(&r, UNSCANNABLE, "max_entries"));
    let instant = Limits {
        part_time_ms: 0,
        ..Limits::default()
    };
    let r = scan_with(instant, vec![blob("many.zip", z)]);
    assert!(has_flag(&r, UNSCANNABLE, "wall time"), "{:?}", r.findings);
}

#[test]
fn message_inside_zip() {
    let eml = format!("Subject: fwd\r\nContent-Type: text/plain\r\n\r\nPatient {SSN}\r\n");
    let z = zip_of(&[("fwd.eml", eml.as_bytes())]);
    let r = scan(vec![blob("mail.zip", z)]);
    assert_eq!(
        origins(&r, "ssn"),
        vec!["attachment:mail.zip/fwd.eml body".to_string()]
    );
}

#[test]
fn extracted_bytes_are_bounded() {
    let big = format!("{SSN} ").repeat(2000);
    let limits = Limits {
        max_extracted_bytes: 4096,
        ..Limits::default()
    };
    let r = scan_with(
        limits,
        vec![
            blob("a.csv", big.clone().into_bytes()),
            blob("b.csv", big.into_bytes()),
        ],
    );
    assert!(has_flag(&r, UNSCANNABLE, "max_extracted_bytes"));
    assert_eq!(r.count_at_least("ssn", Confidence::Medium), 1);
}

/// Truncations and corruptions of every format end with a result.
#[test]
fn truncated_and_malformed_files_never_panic() {
    let samples: Vec<(&str, Vec<u8>)> = vec![
        ("a.pdf", pdf(&[SSN], &[], "", "")),
        ("a.docx", docx(SSN)),
        ("a.xlsx", xlsx(&[&["SSN"], &["536228901"]])),
        ("a.zip", zip_of(&[("x.docx", &docx(SSN))])),
        (
            "a.rtf",
            br"{\rtf1 {\*\x SSN} 536\'2d22\'2d8901\par}".to_vec(),
        ),
        ("a.hl7", HL7.as_bytes().to_vec()),
        ("a.xml", CDA.as_bytes().to_vec()),
        ("a.json", FHIR_JSON.as_bytes().to_vec()),
        ("a.csv", b"ssn\n\"536228901".to_vec()),
    ];
    for (name, bytes) in &samples {
        let full = scan(vec![blob(name, bytes.clone())]);
        assert!(
            full.count_at_least("ssn", Confidence::Medium) >= 1,
            "{name}: {:?}",
            full.findings
        );
        for cut in [
            1,
            7,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len().saturating_sub(5),
        ] {
            let _ = scan(vec![blob(name, bytes[..cut.min(bytes.len())].to_vec())]);
        }
        let mut flipped = bytes.clone();
        for i in (10..flipped.len()).step_by(37) {
            flipped[i] ^= 0x5a;
        }
        let _ = scan(vec![blob(name, flipped)]);
    }
    // Formats that cannot be read at all say so.
    let r = scan(vec![blob("t.pdf", b"%PDF-1.4\n1 0 obj".to_vec())]);
    assert!(r.counts.contains_key(UNSCANNABLE), "{:?}", r.findings);
    let r = scan(vec![blob("t.zip", b"PK\x03\x04garbage".to_vec())]);
    assert!(r.counts.contains_key(UNSCANNABLE));
}

#[test]
fn limits_validate_names_the_key() {
    assert!(Limits::default().validate().is_ok());
    let bad = Limits {
        max_depth: 99,
        ..Limits::default()
    };
    assert!(bad.validate().unwrap_err().contains("max_depth"));
}

/// fuzz/extract_text crash: a PID-7 timestamp with a multi-byte character across
/// byte 8 made the date slice panic (`&ts[..8]`).
#[test]
fn hl7_timestamp_with_multibyte_char_does_not_panic() {
    let raw = include_bytes!("../../../tests/data/fuzz/extract_text-crash-75c360d.bin");
    let r = scan(vec![blob("a.hl7", raw[1..].to_vec())]);
    assert!(!r
        .findings
        .iter()
        .any(|f| f.detector == "dob" && f.origin.as_deref() == Some("attachment:a.hl7 hl7:PID-7")));
}
