//! DLP inside attachments through the real SMTP listener: an SSN inside a PDF and
//! inside a DOCX inside a ZIP triggers the reject rule; a zip bomb is
//! `unscannable-part` and is quarantined; `dlp scan` names where the value is;
//! the audit record names the source without the file name.
//!
//! Values are synthetic: 536-22-1876 is a valid-format SSN, not an advertised fake.

mod common;
use base64::Engine;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const SSN: &str = "536-22-1876";

const POLICY: &str = r#"
internal_domains = ["clinic.example"]

[dlp]
mode = "enforce"

[dlp.limits]
max_ratio = 100

[default]
action = "accept"

[[rule]]
name = "ssn-external"
action = "reject"
[rule.match]
external = true
detectors = ["ssn"]

[[rule]]
name = "unscannable-held"
action = "quarantine"
[rule.match]
detectors = [{ name = "unscannable-part", min_confidence = "low" }]
"#;

/// A one-page PDF with a text layer (Helvetica), xref offsets computed.
fn pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objs = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_string(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len() + 1),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objs.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

fn docx(text: &str) -> Vec<u8> {
    let doc = format!(
        "<w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body></w:document>"
    );
    zip_of(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("word/document.xml", doc.as_bytes()),
    ])
}

/// A message whose only PHI is inside one base64 attachment.
fn with_attachment(name: &str, ctype: &str, data: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "From: <dr@clinic.example>\r\nTo: <billing@partner.example>\r\nSubject: documents\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nPlease see the attachment.\r\n--BB\r\nContent-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--BB--\r\n",
        lines.join("\r\n")
    )
}

fn send_one(gw: &Gateway, msg: &str) -> String {
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<dr@clinic.example>\r\n"),
            send("RCPT TO:<billing@partner.example>\r\n"),
            send("DATA\r\n"),
            send(&format!("{msg}.\r\n")),
            send("QUIT\r\n"),
        ],
    ));
    assert!(
        t.line(3).starts_with("354"),
        "DATA refused: {:?}",
        t.lines(3)
    );
    t.line(4).to_string()
}

fn phigate(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&gw.config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run phigate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn ssn_in_pdf_and_in_docx_in_zip_trigger_the_policy() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::start(GwOpts {
        policy: Some(POLICY.to_string()),
        ..GwOpts::default()
    });
    let in_pdf = with_attachment(
        "results.pdf",
        "application/pdf",
        &pdf(&format!("Patient SSN {SSN}")),
    );
    let in_zip = with_attachment(
        "batch.zip",
        "application/zip",
        &zip_of(&[("claims.docx", &docx(&format!("SSN: {SSN}")))]),
    );
    let bomb = with_attachment(
        "export.zip",
        "application/zip",
        &zip_of(&[("zeros.csv", &vec![b'0'; 4 << 20])]),
    );
    let refused = "550 5.7.1 Message refused by policy ssn-external";
    assert_eq!(send_one(&gw, &in_pdf), refused);
    assert_eq!(send_one(&gw, &in_zip), refused);
    let held = send_one(&gw, &bomb);
    assert!(
        held.starts_with("250 ") && held.contains("held for review by policy unscannable-held"),
        "{held}"
    );
    // A clean PDF passes.
    let clean = with_attachment("menu.pdf", "application/pdf", &pdf("Lunch menu"));
    assert!(send_one(&gw, &clean).starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(gw.wait_messages(1, Duration::from_secs(15)).len(), 1);

    // The operator's scan says where the value is, masked.
    let file = gw.tmp.path().join("zip.eml");
    std::fs::write(&file, &in_zip).expect("write");
    let (ok, out) = phigate(&gw, &["dlp", "scan", &file.display().to_string()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("[attachment:batch.zip/claims.docx document]"),
        "{out}"
    );
    assert!(!out.contains("536-22"), "value shown unmasked: {out}");
    let (ok, out) = phigate(
        &gw,
        &[
            "policy",
            "explain",
            "--from",
            "dr@clinic.example",
            "--to",
            "billing@partner.example",
            &file.display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("source attachment:batch.zip/claims.docx document: ssn=1"),
        "{out}"
    );

    // The audit record names the source by part and format, never by file name.
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(30)).is_some(), "no exit");
    let (ok, out) = phigate(&gw, &["audit", "export", "--format", "jsonl"]);
    assert!(ok, "export failed");
    let decisions: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "policy_decision")
        .collect();
    let text = serde_json::to_string(&decisions).expect("json");
    assert!(
        text.contains("attachment:part 2 (pdf) page 1 (ssn=1)"),
        "{text}"
    );
    assert!(
        text.contains("attachment:part 2 (zip)/entry 1 (docx) document (ssn=1)"),
        "{text}"
    );
    assert!(text.contains("unscannable-part=1"), "{text}");
    for leak in ["results.pdf", "claims.docx", "536-22", "1876"] {
        assert!(!text.contains(leak), "audit names `{leak}`: {text}");
    }
}
