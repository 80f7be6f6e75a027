//! Scan throughput: plain text with all built-in detectors on, and a realistic MIME
//! message with HTML, a base64 CSV attachment and a nested message.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phigate::dlp::{DlpConfig, Scanner};
use phigate::message::TextView;
use std::hint::black_box;

/// Ordinary correspondence: one paragraph in eight carries identifiers (about 1 MiB).
fn plain_text() -> String {
    let prose = "We reviewed the draft agenda for the regional operations meeting and \
        agreed to move the facilities update to the afternoon session. Please send your \
        slides to the coordinator by Thursday so they can be merged into one deck, and \
        let us know about any travel constraints. The catering order covers forty people; \
        if your team needs vegetarian options, add them to the shared sheet before noon.\n";
    let para = dense_para();
    let block = format!("{}{}", prose.repeat(7), para);
    block.repeat((1 << 20) / block.len() + 1)
}

/// Identifier-dense text: every paragraph has a date of birth, NPI, phone and email.
fn dense_text() -> String {
    let para = dense_para();
    para.repeat((1 << 20) / para.len() + 1)
}

fn dense_para() -> &'static str {
    "Dear team, following up on yesterday's meeting about the quarterly \
        budget review. The vendor invoice 88213 was approved on 2024-03-12 and the \
        shipment should arrive next week; please confirm the delivery address with \
        facilities. Patient John (DOB 04/12/1961) was seen by Dr. Lee, NPI 1234567893, \
        and the follow-up is booked. Call me on (212) 555-0187 or write to \
        ops@example.com if anything changes. Version 2.4.1 of the portal goes live \
        Monday at 09:30; remember the new password policy applies to all staff.\n"
}

fn mime_message() -> Vec<u8> {
    use base64::Engine;
    let body = plain_text();
    let csv: String = (0..2000)
        .map(|i| {
            format!(
                "{i},Smith,{:03}-{:02}-{:04},E11.9\n",
                100 + i % 500,
                10 + i % 80,
                1000 + i
            )
        })
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(csv);
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "From: a@example.com\r\nTo: b@example.org\r\nSubject: Referral\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n{body}\r\n\
         --XX\r\nContent-Type: text/html\r\n\r\n<html><body><p>{body}</p></body></html>\r\n\
         --XX\r\nContent-Type: text/csv; name=\"list.csv\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: fwd\r\n\r\n{body}\r\n--XX--\r\n",
        wrapped.join("\r\n")
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let scanner = Scanner::new(&DlpConfig::default()).expect("default config");
    let text = plain_text();
    let view = TextView::from_text(&text);
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("scan_plain_text", |b| {
        b.iter(|| scanner.scan(black_box(&view)))
    });
    let dense = dense_text();
    let dense_view = TextView::from_text(&dense);
    g.throughput(Throughput::Bytes(dense.len() as u64));
    g.bench_function("scan_dense_identifiers", |b| {
        b.iter(|| scanner.scan(black_box(&dense_view)))
    });
    let raw = mime_message();
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("parse_and_scan_mime", |b| {
        b.iter(|| scanner.scan(&TextView::from_bytes(black_box(&raw))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
