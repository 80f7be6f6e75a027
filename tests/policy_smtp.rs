//! DLP and recipient policy through the real SMTP listener: each action (reject, tag,
//! redact_subject, require_tls, quarantine), RCPT-time limits, monitor mode, the
//! unsplittable strictest-wins reply, undecodable parts, policy reload on SIGHUP,
//! `check-config`, `dlp scan` / `policy explain`, and no PHI in debug logs.
//!
//! Values are synthetic: 536-22-1876 is a valid-format SSN that is not one of the
//! advertised fakes; 4111 1111 1111 1111 passes Luhn.

mod common;
use common::*;
use phigate::spool::{Keyring, Spool};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const SSN: &str = "536-22-1876";
const SSN_DIGITS: &str = "536221876";
const CARD: &str = "4111 1111 1111 1111";
const MBI: &str = "1EG4-TE5-MK73";

/// Enforce-mode policy used by most tests. Rule order matters (first match wins).
const POLICY: &str = r#"
internal_domains = ["clinic.example"]

[dlp]
mode = "enforce"

[recipients]
blocked_domains = ["blocked.example"]
max_recipients = 3

[default]
action = "accept"

[[rule]]
name = "alice-on-submission"
action = "tag"
[rule.match]
# Identities are `method:name` (password:, client-cert:, ip:).
auth = ["password:alice"]
listener = ["submission"]

[[rule]]
name = "ssn-external"
action = "reject"
[rule.match]
external = true
detectors = ["ssn"]

[[rule]]
name = "undecodable-refused"
action = "reject"
[rule.match]
detectors = [{ name = "undecodable-part", min_confidence = "low" }]

[[rule]]
name = "cards-held"
action = "quarantine"
require_tls = "verify"
[rule.match]
detectors = ["card"]

[[rule]]
name = "subject-redact"
action = "tag"
redact_subject = "[Secure message]"
require_tls = "verify"
[rule.match]
in_subject = true
detectors = ["ssn", "mbi"]

[[rule]]
name = "ssn-internal-dane"
action = "tag"
require_tls = "dane-only"
[rule.match]
external = false
detectors = ["ssn"]
"#;

const SENDER: &str = "dr@clinic.example";
const INTERNAL: &str = "nurse@clinic.example";
const EXTERNAL: &str = "billing@partner.example";

fn gateway(policy: &str) -> Gateway {
    Gateway::start(GwOpts {
        policy: Some(policy.to_string()),
        ..GwOpts::default()
    })
}

/// `\n`-written text as the CRLF message a client sends.
fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

/// One transaction over implicit TLS with the Python peer. Step indices: 0 EHLO,
/// 1 MAIL, 2.. RCPT (one each), then DATA, then the end-of-data reply.
/// At least one recipient must be accepted (otherwise DATA is refused).
fn transaction(gw: &Gateway, rcpts: &[&str], msg: &str) -> Transcript {
    py(gw.peer("smtps", steps(rcpts, msg)))
}

fn steps(rcpts: &[&str], msg: &str) -> Vec<Value> {
    let mut steps = vec![
        send("EHLO ehr.clinic.test\r\n"),
        send(&format!("MAIL FROM:<{SENDER}>\r\n")),
    ];
    for r in rcpts {
        steps.push(send(&format!("RCPT TO:<{r}>\r\n")));
    }
    steps.push(send("DATA\r\n"));
    steps.push(send(&format!("{}.\r\n", crlf(msg))));
    steps.push(send("QUIT\r\n"));
    steps
}

/// The end-of-data reply of `transaction`.
fn data_reply(t: &Transcript, n_rcpts: usize) -> String {
    assert!(
        t.line(2 + n_rcpts).starts_with("354"),
        "DATA not accepted: {:?}",
        t.lines(2 + n_rcpts)
    );
    t.line(3 + n_rcpts).to_string()
}

fn queued_id(reply: &str) -> String {
    reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .and_then(|s| s.get(..26))
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"))
        .to_string()
}

/// The header block of a stored message, as text.
fn header_block(eml: &[u8]) -> String {
    let s = String::from_utf8_lossy(eml);
    s.split("\r\n\r\n").next().unwrap_or("").to_string()
}

/// Unfolded header fields named `name` (case-insensitive), with their values.
fn header_values(eml: &[u8], name: &str) -> Vec<String> {
    let unfolded = header_block(eml)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    unfolded
        .split("\r\n")
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// Open the stopped gateway's spool in-process with its key file.
fn open_spool(gw: &Gateway) -> Spool {
    let ring = Keyring::load(&gw.tmp.path().join("master.keys")).expect("load keyring");
    Spool::open(&gw.data.join("spool"), ring).expect("open spool")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn run_cli(gw: &Gateway, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(&gw.config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run phigate")
}

fn wait_log(gw: &Gateway, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "log never said `{needle}`:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ssn_message(subject: &str) -> String {
    format!(
        "From: <{SENDER}>\nTo: <{EXTERNAL}>\nSubject: {subject}\n\nPatient SSN {SSN}, please update the account.\n"
    )
}

#[test]
fn reject_names_the_rule_never_the_data_and_stores_nothing() {
    if !require_tool("swaks") {
        return;
    }
    let mut gw = gateway(POLICY);
    let file = gw.tmp.path().join("msg.eml");
    // swaks adds the final CRLF . CRLF itself.
    std::fs::write(&file, crlf(ssn_message("account update").trim_end())).expect("write");
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(gw.port("smtps").to_string())
        .args(["--tls-on-connect", "--tls-verify", "--tls-ca-path"])
        .arg(&gw.pki.ca)
        .args([
            "--ehlo",
            "ehr.clinic.test",
            "--from",
            SENDER,
            "--to",
            EXTERNAL,
        ])
        .arg("--data")
        .arg(format!("@{}", file.display()))
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // Server lines only (swaks marks them `<~`; `<~*` for errors).
    let server: Vec<&str> = text.lines().filter(|l| l.starts_with('<')).collect();
    let reply = server
        .iter()
        .find(|l| l.contains(" 550 "))
        .unwrap_or_else(|| panic!("no 550 reply: {text}"));
    assert!(
        reply.ends_with("550 5.7.1 Message refused by policy ssn-external"),
        "{reply}"
    );
    for l in &server {
        assert!(
            !l.contains("1876") && !l.contains("536-22"),
            "reply leaks the value: {l}"
        );
    }
    assert!(gw.messages().is_empty(), "a refused message was delivered");
    gw.stop();
    let spool = open_spool(&gw);
    assert!(spool.messages().expect("messages").is_empty(), "queued");
    assert!(spool.quarantined().expect("quarantined").is_empty());
}

#[test]
fn tag_header_counts_detectors_and_replaces_a_forged_one() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    let msg = format!(
        "X-Phigate-DLP: none\nFrom: <{SENDER}>\nTo: <{INTERNAL}>\nx-phigate-dlp: ssn=0\nSubject: chart note\n\nSSN {SSN}, MBI {MBI}.\n"
    );
    let t = transaction(&gw, &[INTERNAL], &msg);
    let id = queued_id(&data_reply(&t, 1));
    let (eml, env) = gw.message(&id);
    assert_eq!(
        header_values(&eml, "X-Phigate-DLP"),
        vec!["mbi=1, ssn=1".to_string()],
        "{}",
        header_block(&eml)
    );
    let head = header_block(&eml);
    assert!(!head.contains("1876") && !head.contains("MK73"), "{head}");
    // The rule also raises the delivery level.
    assert_eq!(env["tls_floor"], "dane-only", "{env}");
}

#[test]
fn forged_tag_header_is_removed_from_untagged_mail() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    // A clean message: no rule fires, the default accepts, nothing is added...
    let msg = format!(
        "From: <{SENDER}>\nTo: <{INTERNAL}>\nX-Phigate-DLP: none\nSubject: lunch\n\nNoon at the usual place.\n"
    );
    let t = transaction(&gw, &[INTERNAL], &msg);
    let id = queued_id(&data_reply(&t, 1));
    let (eml, _) = gw.message(&id);
    // ...but a sender-supplied scan verdict must not reach the recipient either.
    assert!(
        header_values(&eml, "X-Phigate-DLP").is_empty(),
        "{}",
        header_block(&eml)
    );
    assert_eq!(header_values(&eml, "Subject"), vec!["lunch".to_string()]);
}

#[test]
fn subject_with_phi_is_redacted_and_tls_raised_to_verify() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    let msg = format!(
        "From: <{SENDER}>\nTo: <{INTERNAL}>\nSubject: Kowalczyk SSN {SSN} follow-up\n\nPlease see the chart.\n"
    );
    let t = transaction(&gw, &[INTERNAL], &msg);
    let id = queued_id(&data_reply(&t, 1));
    let (eml, env) = gw.message(&id);
    assert_eq!(
        header_values(&eml, "Subject"),
        vec!["[Secure message]".to_string()]
    );
    let all = String::from_utf8_lossy(&eml);
    assert!(
        !all.contains("Kowalczyk") && !all.contains(SSN),
        "original subject survived: {all}"
    );
    assert_eq!(header_values(&eml, "X-Phigate-DLP"), vec!["ssn=1"]);
    assert_eq!(env["tls_floor"], "verify", "{env}");
}

/// The held message is listed in the spool's quarantine under its rule, and released
/// (here directly through the spool, with the daemon stopped) it is delivered.
#[test]
fn quarantine_holds_the_message_then_release_delivers_it() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = gateway(POLICY);
    let msg = format!(
        "From: <{SENDER}>\nTo: <{INTERNAL}>\nSubject: card on file\n\nCard {CARD} for the copay.\n"
    );
    let t = transaction(&gw, &[INTERNAL], &msg);
    let reply = data_reply(&t, 1);
    let id = queued_id(&reply);
    assert!(
        reply.ends_with(&format!(
            "queued as {id}; held for review by policy cards-held"
        )),
        "{reply}"
    );
    assert!(!reply.contains("1111"), "{reply}");
    assert!(gw.messages().is_empty(), "a held message was delivered");

    gw.stop();
    let spool = open_spool(&gw);
    let held = spool.quarantined().expect("quarantined");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0.to_string(), id);
    assert_eq!(held[0].1.rule, "cards-held");
    runtime()
        .block_on(spool.release(&held[0].0, phigate::types::now_secs()))
        .expect("release");
    assert!(spool.quarantined().expect("quarantined").is_empty());
    drop(spool);

    gw.restart("info");
    let (eml, env) = gw.message(&id);
    assert!(String::from_utf8_lossy(&eml).contains(CARD));
    assert_eq!(env["recipients"][0]["address"], INTERNAL);
    // The rule's TLS level was stored with the held message and survives release.
    assert_eq!(env["tls_floor"], "verify", "{env}");
}

/// The same flow through the operator CLI and the control socket.
#[test]

fn quarantine_list_and_release_through_the_cli() {
    if !require_tool(PYTHON) {
        return;
    }
    // The socket path must be known before the tempdir exists; keep it short and unique.
    let sock = std::env::temp_dir().join(format!("phigate-q-{}.sock", std::process::id()));
    let gw = Gateway::start(GwOpts {
        policy: Some(POLICY.to_string()),
        server_extra: format!("control_socket = \"{}\"\n", sock.display()),
        ..GwOpts::default()
    });
    let msg = format!("From: <{SENDER}>\nTo: <{INTERNAL}>\nSubject: x\n\nCard {CARD}.\n");
    let t = transaction(&gw, &[INTERNAL], &msg);
    let id = queued_id(&data_reply(&t, 1));
    assert!(gw.messages().is_empty());

    let out = run_cli(&gw, &["quarantine", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not listed: {rows}"));
    assert_eq!(row["rule"], "cards-held");

    let out = run_cli(&gw, &["quarantine", "release", &id]);
    assert!(out.status.success(), "{out:?}");
    let (eml, _) = gw.message(&id);
    assert!(String::from_utf8_lossy(&eml).contains(CARD));
    let _ = std::fs::remove_file(&sock);
}

/// Rules can match the authenticated identity and the listener of the session.
#[test]
fn rules_match_authenticated_identity_and_listener() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts {
        policy: Some(POLICY.to_string()),
        // Only the password authorises, so the identity is alice's.
        allow_networks: vec!["192.0.2.0/24"],
        users: vec!["alice"],
        ..GwOpts::default()
    });
    let msg = "From: <dr@clinic.example>\nSubject: rota\n\nNo identifiers here.\n";
    let session = |listener: &str| {
        let mut s = if listener == "submission" {
            starttls_prelude()
        } else {
            vec![send("EHLO ehr.clinic.test\r\n")]
        };
        s.push(send(&auth_plain("alice", PASSWORD)));
        s.extend(steps(&[INTERNAL], msg).into_iter().skip(1));
        gw.peer(listener, s)
    };
    let ts = py_many(vec![session("submission"), session("smtps")]);
    let n = ts[0].steps.len();
    let on_submission = queued_id(ts[0].line(n - 2));
    let on_smtps = queued_id(ts[1].line(ts[1].steps.len() - 2));
    let (eml, _) = gw.message(&on_submission);
    assert_eq!(header_values(&eml, "X-Phigate-DLP"), vec!["none"]);
    let (eml, env) = gw.message(&on_smtps);
    assert!(header_values(&eml, "X-Phigate-DLP").is_empty());
    assert_eq!(env["auth"]["identity"], "alice");
}

#[test]
fn rcpt_time_refusals_are_per_recipient() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    let rcpts = [
        "a@blocked.example",
        "b@clinic.example",
        "c@partner.example",
        "d@clinic.example",
        "e@clinic.example",
    ];
    let msg = "From: <dr@clinic.example>\nSubject: rota\n\nThe rota is attached.\n";
    let t = transaction(&gw, &rcpts, msg);
    assert_eq!(
        t.line(2),
        "550 5.7.1 Recipient refused by policy (blocked domain)"
    );
    assert_eq!(t.lines(3), vec!["250 2.1.5 Ok"]);
    assert_eq!(t.lines(4), vec!["250 2.1.5 Ok"]);
    assert_eq!(t.lines(5), vec!["250 2.1.5 Ok"]);
    // max_recipients = 3 counts accepted recipients only.
    assert_eq!(t.line(6), "452 4.5.3 Too many recipients");
    let id = queued_id(&data_reply(&t, rcpts.len()));
    let (_, env) = gw.message(&id);
    let got: Vec<&str> = env["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .filter_map(|r| r["address"].as_str())
        .collect();
    assert_eq!(
        got,
        vec!["b@clinic.example", "c@partner.example", "d@clinic.example"]
    );
    assert_eq!(gw.messages().len(), 1);
}

#[test]
fn monitor_mode_delivers_and_says_what_would_have_happened() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(&POLICY.replace("mode = \"enforce\"", "mode = \"monitor\""));
    let ssn = ssn_message("account update");
    let card = format!("From: <{SENDER}>\nSubject: copay\n\nCard {CARD}.\n");
    let ts = py_many(vec![
        gw.peer("smtps", steps(&[EXTERNAL], &ssn)),
        gw.peer("smtps", steps(&[INTERNAL], &card)),
    ]);
    let rejected = queued_id(&data_reply(&ts[0], 1));
    let held = queued_id(&data_reply(&ts[1], 1));
    assert_eq!(
        data_reply(&ts[1], 1),
        format!("250 2.0.0 Ok: queued as {held}"),
        "monitor mode must not hold"
    );
    let (eml, env) = gw.message(&rejected);
    assert_eq!(
        header_values(&eml, "X-Phigate-DLP"),
        vec!["ssn=1; monitor; would=reject; rule=ssn-external"]
    );
    assert!(env["tls_floor"].is_null(), "monitor changed TLS: {env}");
    let (eml, _) = gw.message(&held);
    assert_eq!(
        header_values(&eml, "X-Phigate-DLP"),
        vec!["card=1; monitor; would=quarantine; rule=cards-held"]
    );
}

#[test]
fn recipients_with_different_outcomes_get_the_strictest_and_are_told_why() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    // Internal: tag (ssn-internal-dane); external: reject (ssn-external).
    let t = transaction(&gw, &[INTERNAL, EXTERNAL], &ssn_message("account"));
    let reply = data_reply(&t, 2);
    assert_eq!(
        reply,
        "550 5.7.1 Message refused by policy ssn-external (recipients differ but the message cannot be split: strictest outcome applied)"
    );
    assert!(gw.messages().is_empty());
}

const UNDECODABLE: &str = "From: <dr@clinic.example>\nSubject: report\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BB\"\n\n--BB\nContent-Type: text/plain\n\nReport attached.\n--BB\nContent-Type: application/pdf; name=\"r.pdf\"\nContent-Disposition: attachment; filename=\"r.pdf\"\nContent-Transfer-Encoding: base64\n\n!!!!####$$$$%%%%\n*&^%$#@!\n--BB--\n";

#[test]
fn malformed_base64_attachment_is_a_finding_policy_can_act_on() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    let t = transaction(&gw, &[INTERNAL], UNDECODABLE);
    assert_eq!(
        data_reply(&t, 1),
        "550 5.7.1 Message refused by policy undecodable-refused"
    );
    assert!(gw.messages().is_empty());

    let file = gw.tmp.path().join("undecodable.eml");
    std::fs::write(&file, crlf(UNDECODABLE)).expect("write");
    let out = run_cli(&gw, &["dlp", "scan", &file.display().to_string(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("scan JSON");
    assert_eq!(v["counts"]["undecodable-part"], 1, "{v}");
}

/// A broken policy: `check-config` names file, line and rule; SIGHUP keeps the old one
/// (still enforced) and logs why; a good new policy then changes behaviour.
#[test]
fn broken_policy_is_reported_and_reload_keeps_the_old_one() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = gateway(POLICY);
    let path = gw.policy_path().display().to_string();
    let broken = "internal_domains = [\"clinic.example\"]\n\n[[rule]]\nname = \"first\"\naction = \"tag\"\n\n[[rule]]\nname = \"second\"\nactoin = \"reject\"\n";
    std::fs::write(gw.policy_path(), broken).expect("write policy");

    let out = run_cli(&gw, &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        err.contains(&format!("{path}:9: rule `second`:")) && err.contains("actoin"),
        "{err}"
    );

    gw.signal("HUP");
    wait_log(&gw, "reload refused", 1);
    let log = gw.log();
    let why = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_default();
    assert!(
        why.contains(&format!("{path}:9")) && why.contains("rule `second`"),
        "{why}"
    );
    // The old policy still rejects SSNs to external recipients.
    let t = transaction(&gw, &[EXTERNAL], &ssn_message("account"));
    assert_eq!(
        data_reply(&t, 1),
        "550 5.7.1 Message refused by policy ssn-external"
    );

    let good = "internal_domains = [\"clinic.example\"]\n\n[recipients]\ndeny_external = true\n\n[default]\naction = \"tag\"\n";
    std::fs::write(gw.policy_path(), good).expect("write policy");
    let out = run_cli(&gw, &["check-config"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&path));
    gw.signal("HUP");
    wait_log(&gw, "configuration reloaded", 1);

    let t = transaction(&gw, &[EXTERNAL, INTERNAL], &ssn_message("account"));
    assert_eq!(
        t.line(2),
        "550 5.7.1 Recipient refused by policy (external recipients not permitted)"
    );
    assert_eq!(t.line(3), "250 2.1.5 Ok");
    let id = queued_id(&data_reply(&t, 2));
    let (eml, env) = gw.message(&id);
    assert_eq!(header_values(&eml, "X-Phigate-DLP"), vec!["ssn=1"]);
    assert_eq!(env["recipients"].as_array().map(Vec::len), Some(1));
    assert!(env["tls_floor"].is_null(), "{env}");
}

#[test]
fn dlp_scan_masks_values_and_explain_names_the_rule_per_recipient() {
    let gw = gateway(POLICY);
    let file = gw.tmp.path().join("m.eml");
    std::fs::write(
        &file,
        crlf(&format!(
            "From: <{SENDER}>\nSubject: update\n\nSSN {SSN}; card {CARD}.\n"
        )),
    )
    .expect("write");
    let f = file.display().to_string();

    let out = run_cli(&gw, &["dlp", "scan", &f, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for raw in [SSN, SSN_DIGITS, CARD, "4111111111111111"] {
        assert!(!text.contains(raw), "unmasked {raw} in {text}");
    }
    let v: Value = serde_json::from_str(&text).expect("scan JSON");
    let masked: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["masked"].as_str())
        .collect();
    assert!(masked.contains(&"***-**-1876"), "{masked:?}");
    assert!(masked.contains(&"**** **** **** 1111"), "{masked:?}");

    // SSN only, so the per-recipient rules differ.
    std::fs::write(&file, crlf(&ssn_message("update"))).expect("write");
    let out = run_cli(
        &gw,
        &[
            "policy",
            "explain",
            "--from",
            SENDER,
            "--to",
            INTERNAL,
            "--to",
            EXTERNAL,
            "--to",
            "x@blocked.example",
            &f,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let section = |rcpt: &str| {
        let start = text
            .find(&format!("recipient {rcpt}:"))
            .unwrap_or_else(|| panic!("no section for {rcpt}: {text}"));
        let rest = &text[start..];
        rest[..rest[1..].find("\n\n").map_or(rest.len(), |e| e + 1)].to_string()
    };
    assert!(
        section(INTERNAL).contains("rule `ssn-internal-dane` matches -> tag"),
        "{text}"
    );
    assert!(
        section(EXTERNAL).contains("rule `ssn-external` matches -> reject"),
        "{text}"
    );
    assert!(
        section("x@blocked.example").contains("refused at RCPT"),
        "{text}"
    );
    assert!(!text.contains(SSN) && !text.contains(SSN_DIGITS), "{text}");
}

/// Canaries in every PHI-bearing place, through accepted, rejected and RCPT-refused
/// paths, never reach the log at debug level.
#[test]
fn no_phi_in_debug_logs() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::start(GwOpts {
        policy: Some(POLICY.to_string()),
        log_level: "debug",
        ..GwOpts::default()
    });
    let kept = "canary-rcpt-mv35@clinic.example";
    let refused = "canary-rcpt-jd90@partner.example";
    let blocked = "canary-rcpt-bl12@blocked.example";
    let msg = format!(
        "From: <{SENDER}>\nSubject: Canary-Subj-QX81\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BB\"\n\n--BB\nContent-Type: text/plain\n\ncanary-body-zk42 SSN {SSN}\n--BB\nContent-Type: text/csv; name=\"canary-file-wp77.csv\"\nContent-Disposition: attachment; filename=\"canary-file-wp77.csv\"\n\nname,ssn\ncanary-cell-rt55,{SSN}\n--BB--\n"
    );
    let ts = py_many(vec![
        gw.peer("smtps", steps(&[blocked, kept], &msg)),
        gw.peer("smtps", steps(&[refused], &msg)),
    ]);
    assert!(
        ts[0].line(2).starts_with("550 5.7.1"),
        "{:?}",
        ts[0].lines(2)
    );
    let id = queued_id(&data_reply(&ts[0], 2));
    assert!(data_reply(&ts[1], 1).starts_with("550 5.7.1 Message refused by policy"));
    gw.message(&id);
    gw.stop();

    let log = gw.log();
    assert!(log.contains("DEBUG"), "not at debug level:\n{log}");
    assert!(log.contains("policy decision"), "{log}");
    let lower = log.to_ascii_lowercase();
    for canary in [
        "canary-subj-qx81",
        "canary-body-zk42",
        "canary-file-wp77",
        "canary-cell-rt55",
        "canary-rcpt-mv35",
        "canary-rcpt-jd90",
        "canary-rcpt-bl12",
        SSN,
        SSN_DIGITS,
    ] {
        assert!(!lower.contains(canary), "`{canary}` leaked into the log");
    }
}
