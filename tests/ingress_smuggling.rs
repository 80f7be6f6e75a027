//! SMTP smuggling (CVE-2023-51764 class): every end-of-DATA sequence in
//! tests/data/eod-sequences.tsv, sent by a raw Python ssl peer from an allowed network
//! and as an AUTH client, leaves at most one message, and what phigate stores is
//! CRLF-only. The CRLF.CRLF control must end DATA (proving the probe can detect a
//! second transaction).

mod common;
use common::*;
use serde_json::Value;

struct Seq {
    id: String,
    bytes: Vec<u8>,
}

fn sequences() -> Vec<Seq> {
    let text = std::fs::read_to_string(data_dir().join("eod-sequences.tsv")).expect("tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let hex = cols.get(2).expect("hex column");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex byte"))
                .collect();
            Seq {
                id: cols[0].to_string(),
                bytes,
            }
        })
        .collect()
}

/// Bytes 0-255 as the peer's latin-1 text.
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn probe(gw: &Gateway, listener: &str, auth: bool, seq: &Seq) -> Value {
    let mut payload = format!(
        "From: <probe@clinic.test>\r\nTo: <victim@example.net>\r\nSubject: probe {id}\r\n\r\nbody line {id}",
        id = seq.id
    );
    payload += &latin1(&seq.bytes);
    payload += "MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<x@evil.example>\r\nDATA\r\n";
    payload += "From: <smuggled@evil.example>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n";
    payload += "\r\n.\r\n";
    let mut steps = vec![send("EHLO prober.test\r\n")];
    if auth {
        steps.push(send(&auth_plain("alice", PASSWORD)));
    }
    steps.push(send_n(
        "MAIL FROM:<probe@clinic.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n",
        3,
    ));
    steps.push(serde_json::json!({"send": payload, "replies": 1, "sentinel": true}));
    gw.peer(listener, steps)
}

fn run_mode(gw: &Gateway, listener: &str, auth: bool) -> usize {
    let seqs = sequences();
    let ts = py_many(seqs.iter().map(|s| probe(gw, listener, auth, s)).collect());
    let mut queued = 0;
    for (seq, t) in seqs.iter().zip(&ts) {
        let ctx = format!("{} (listener {listener}): {}", seq.id, t.raw);
        let n = t.steps.len();
        if auth {
            assert_eq!(t.line(1), "235 2.7.0 Authentication successful", "{ctx}");
        }
        assert_eq!(
            t.lines(n - 2),
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>"
            ],
            "{ctx}"
        );
        let after = &t.steps[n - 1].replies;
        assert!(!after.is_empty(), "no reply to the probe: {ctx}");
        let ids: Vec<String> = after.iter().filter_map(|r| r.queued_id()).collect();
        queued += ids.len();
        if seq.id == "control_crlf_dot_crlf" {
            // The only real end of data: the smuggled block runs as a second transaction.
            let lines: Vec<&str> = after.iter().map(|r| r.last()).collect();
            assert_eq!(ids.len(), 2, "{ctx}");
            assert_eq!(
                &lines[1..4],
                [
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>"
                ],
                "{ctx}"
            );
            let (first, _) = gw.message(&ids[0]);
            let (_, body) = split_received(&first);
            assert!(
                body.ends_with(format!("body line {}\r\n", seq.id).as_bytes()),
                "{ctx}"
            );
            continue;
        }
        assert_eq!(after.len(), 1, "more than one reply to one DATA: {ctx}");
        assert!(
            !after.iter().any(|r| r.code == 354),
            "second DATA started: {ctx}"
        );
        let r = &after[0];
        assert!(
            r.code == 250 || r.code == 554,
            "unexpected reply {}: {ctx}",
            r.last()
        );
        if let Some(id) = r.queued_id() {
            // Accepted as one message: the smuggled commands are just text inside it.
            let (eml, _) = gw.message(&id);
            let text = String::from_utf8_lossy(&eml);
            assert!(text.contains("MAIL FROM:<smuggled@evil.example>"), "{ctx}");
        } else {
            assert!(r.last().starts_with("554 5."), "{ctx}");
        }
    }
    queued
}

#[test]
fn every_end_of_data_sequence_leaves_at_most_one_message() {
    if !require_tool(PYTHON) {
        return;
    }
    let seqs = sequences();
    assert_eq!(seqs.len(), 14, "eod-sequences.tsv incomplete");
    assert!(seqs.iter().any(|s| s.id == "control_crlf_dot_crlf"));
    let gw = Gateway::start(GwOpts {
        listeners: vec![
            listener("ip", "implicit", &["ip"]),
            listener("pw", "implicit", &["password"]),
        ],
        users: vec!["alice"],
        ..GwOpts::default()
    });
    // Trusted network and authenticated client get exactly the same treatment.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_mode(&gw, "ip", false));
        let b = s.spawn(|| run_mode(&gw, "pw", true));
        (
            a.join().expect("ip-mode probes"),
            b.join().expect("auth-mode probes"),
        )
    });
    let stored = gw.messages();
    assert_eq!(
        stored.len(),
        a + b,
        "stored messages differ from 250 replies"
    );
    // Control: 2 per mode; crlf_dotdot_crlf: 1 per mode; everything else refused.
    assert_eq!(a, 3, "ip mode");
    assert_eq!(b, 3, "auth mode");
    for (id, eml, _) in &stored {
        assert!(crlf_only(eml), "{id} stored with bare CR/LF or NUL");
    }
    assert!(gw.log().contains("code=554"), "refusals not logged");
}
