//! PHI leak check: one end-to-end run at `--log-level debug` with canaries planted in
//! subjects, bodies, attachment names and contents, and recipient local parts, through
//! every path a message can take: delivered over STARTTLS to a receiving server, bounced
//! (the receiver answers 550 for one recipient, phigate sends a DSN), rejected and
//! quarantined by policy, and refused at RCPT. Afterwards no canary, in any common
//! encoding, appears in:
//!
//! - phigate's stdout or stderr;
//! - the journal: under systemd those two streams are what the journal gets.
//!   `systemd/phigate.service` sets no `StandardOutput=`/`StandardError=` (this test
//!   fails if it ever sends them elsewhere), so systemd's defaults apply: `DefaultStandardOutput=journal` and
//!   `StandardError=inherit`. journald itself cannot run here (it needs systemd as
//!   PID 1), so it is not faked. Like the unit, this run passes `--log-format json`, so
//!   the bytes checked are the ones the journal would store;
//! - the Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`, scraped with Python's
//!   urllib while the daemon runs; the scrape must show the accepted message);
//! - every webhook POST, headers and body, to a loopback HTTP receiver in this test
//!   subscribed to all events with the default payload (no addresses); the delivered,
//!   bounced and quarantined events must arrive;
//! - the audit records forwarded to syslog (`[audit] syslog`, addresses off, the
//!   default), as a real `rsyslogd` (imudp on loopback, omfile) received, parsed as
//!   RFC 5424 and wrote them, including security alerts and sending-limit refusals;
//! - the DSN, any file under `data_dir` (the spool and audit store are encrypted), and
//!   the loopback traffic to the receiver (TLS on the wire).
//!
//! The receiver's own copy must contain every canary: that proves they really went
//! through.

mod common;
use base64::Engine;
use common::*;
use serde_json::Value;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SUBJECT: &str = "Qz7SubjCanary4Kp";
/// Non-ASCII so the quoted-printable and base64 forms differ from the raw one.
const BODY: &str = "Wv2B\u{f6}dyCanary9Lm";
const ATT_NAME: &str = "Rx5AttnCanary3Hd";
const ATT_CONTENT: &str = "Ty8AttcCanary6Fg";
/// Planted only on recipients that are delivered or refused at RCPT, never on the one
/// that bounces: the DSN legitimately names the failed address.
const LOCAL: &str = "pt8rcptcanary2nb";

const SENDER: &str = "ehr@clinic.test";
const BOUNCE: &str = "bounce-1@x.test";
const SSN: &str = "536-22-1876";
const CARD: &str = "4111 1111 1111 1111";

const POLICY: &str = r#"
internal_domains = ["clinic.test"]

[dlp]
mode = "enforce"

[recipients]
blocked_domains = ["blocked.test"]

[default]
action = "accept"

[[rule]]
name = "ssn-out"
action = "reject"
[rule.match]
detectors = ["ssn"]

[[rule]]
name = "cards-held"
action = "quarantine"
[rule.match]
detectors = ["card"]

[[rule]]
name = "portal-route"
action = "portal"
[rule.match]
recipient = ["*@portal.test"]
"#;

use common::canary::{contains, forms};

/// Which canaries (name, form) occur in `hay`.
fn leaks(hay: &[u8], canaries: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, c) in canaries {
        for (form, bytes) in forms(c) {
            if contains(hay, &bytes) {
                found.push(format!("{name}/{form}"));
            }
        }
    }
    found
}

fn all_canaries() -> Vec<(&'static str, &'static str)> {
    vec![
        ("subject", SUBJECT),
        ("body", BODY),
        ("attachment-name", ATT_NAME),
        ("attachment-content", ATT_CONTENT),
        ("recipient-local-part", LOCAL),
    ]
}

/// A multipart message with every content canary; `extra` is added to the body.
fn message(extra: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = quoted_printable_text(&format!("Patient follow-up {BODY}.\n{extra}\n"));
    format!(
        "From: <{SENDER}>\r\nTo: <{LOCAL}@x.test>\r\nSubject: Results {SUBJECT}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\n{body}\r\n\
         --b1\r\nContent-Type: text/plain; name=\"{ATT_NAME}.txt\"\r\n\
         Content-Disposition: attachment; filename=\"{ATT_NAME}.txt\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        b64(&format!("lab sheet {ATT_CONTENT}\n"))
    )
}

/// Quoted-printable for a body (keeps spaces and line breaks readable).
fn quoted_printable_text(s: &str) -> String {
    s.lines()
        .map(|l| {
            l.bytes()
                .map(|c| match c {
                    b' ' | b'.' | b'-' | b'/' | b':' => (c as char).to_string(),
                    _ if c.is_ascii_alphanumeric() => (c as char).to_string(),
                    _ => format!("={c:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn transaction(port: u16, ca: &Path, rcpts: &[String], msg: &str) -> Transcript {
    let mut steps = vec![
        send("EHLO ehr.clinic.test\r\n"),
        send(&format!("MAIL FROM:<{SENDER}>\r\n")),
    ];
    for r in rcpts {
        steps.push(send(&format!("RCPT TO:<{r}>\r\n")));
    }
    steps.push(send("DATA\r\n"));
    steps.push(send(&format!("{msg}.\r\n")));
    steps.push(send("QUIT\r\n"));
    py(serde_json::json!({
        "port": port, "mode": "implicit", "cafile": ca, "servername": "localhost",
        "steps": steps,
    }))
}

/// A child process this test started; killed (by its own pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("timed out waiting for {what}");
    false
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Start tshark on loopback for `port`; None when it cannot capture here (a failure
/// under CI=true).
fn capture(port: u16, file: &Path, errlog: &Path) -> Option<Proc> {
    if !require_tool("tshark") {
        return None;
    }
    let child = Command::new("tshark")
        .args(["-i", "lo", "-q", "-f", &format!("tcp port {port}"), "-w"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(errlog).expect("tshark log"))
        .spawn()
        .expect("spawn tshark");
    let mut p = Proc(child);
    let started = wait_for("tshark", Duration::from_secs(20), || {
        std::fs::read_to_string(errlog).is_ok_and(|s| s.contains("Capturing on"))
    });
    let alive = p.0.try_wait().ok().flatten().is_none();
    if started && alive {
        return Some(p);
    }
    let why = std::fs::read_to_string(errlog).unwrap_or_default();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("tshark cannot capture on lo (CI=true): {why}");
    }
    eprintln!("SKIP capture: tshark cannot capture here: {why}");
    None
}

/// A real syslog peer: `rsyslogd` in the foreground with its own configuration,
/// receiving RFC 5424 over UDP on loopback and writing each message, with the fields it
/// parsed, to `out`. None when rsyslogd is missing or cannot start here (a failure under
/// CI=true).
struct Rsyslog {
    proc: Proc,
    port: u16,
    out: PathBuf,
}

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

fn rsyslog(dir: &Path) -> Option<Rsyslog> {
    if !require_tool(RSYSLOGD) {
        return None;
    }
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port();
    let out = dir.join("syslog.out");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imudp\")\n\
             template(name=\"parsed\" type=\"string\" string=\"%protocol-version% %syslogfacility% \
             %syslogseverity% %app-name% %msgid% %rawmsg%\\n\")\n\
             ruleset(name=\"phigate\") {{ action(type=\"omfile\" file=\"{out}\" template=\"parsed\") }}\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"phigate\")\n",
            dir = dir.display(),
            out = out.display(),
        ),
    )
    .expect("rsyslog.conf");
    let log = dir.join("rsyslogd.log");
    let child = Command::new(RSYSLOGD)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("rsyslogd log"))
        .stderr(std::fs::File::create(dir.join("rsyslogd.err")).expect("rsyslogd err"))
        .spawn()
        .expect("spawn rsyslogd");
    let mut p = Proc(child);
    // Ready once a probe datagram has made it to the output file.
    let probe = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
    let started = wait_for("rsyslogd", Duration::from_secs(20), || {
        let _ = probe.send_to(b"<14>1 - - probe - - - rsyslogd-ready", ("127.0.0.1", port));
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("rsyslogd-ready"))
    });
    let alive = p.0.try_wait().ok().flatten().is_none();
    if started && alive {
        return Some(Rsyslog { proc: p, port, out });
    }
    let why = std::fs::read_to_string(dir.join("rsyslogd.err")).unwrap_or_default()
        + &std::fs::read_to_string(&log).unwrap_or_default();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("rsyslogd did not start (CI=true): {why}");
    }
    eprintln!("SKIP syslog: rsyslogd cannot run here: {why}");
    None
}

/// Under systemd, stdout and stderr go to the journal unless the unit redirects them.
fn unit_sends_output_to_the_journal() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/phigate.service");
    let text = std::fs::read_to_string(&unit).expect("systemd/phigate.service");
    for l in text.lines().map(str::trim) {
        if let Some((k, v)) = l.split_once('=') {
            if k == "StandardOutput" || k == "StandardError" {
                assert!(
                    v == "journal" || (k == "StandardError" && v == "inherit"),
                    "{} sends {k} to {v}, not the journal: extend this test to that sink",
                    unit.display()
                );
            }
        }
    }
}

#[test]
fn canaries_never_leave_the_encrypted_spool_or_the_tls_channel() {
    if !require_tool(PYTHON) {
        return;
    }
    unit_sends_output_to_the_journal();
    let work = tempfile::tempdir().expect("tempdir");
    let syslog = rsyslog(work.path());
    let (hook_port, posts) = http_receiver(|_| "200 OK");
    let hook_secret = work.path().join("hook.secret");
    std::fs::write(&hook_secret, "leak-test-hook-secret\n").expect("hook secret");
    let metrics_port = free_port();
    let sink_port = free_port();
    let mut delivery = format!(
        "mode = \"mx\"\ntls_level = \"encrypt\"\nconnect_timeout = \"5s\"\n\
         [delivery.domains.\"x.test\"]\nroute = \"127.0.0.1:{sink_port}\"\ntls_level = \"encrypt\"\n\
         [delivery.domains.\"clinic.test\"]\nroute = \"127.0.0.1:{sink_port}\"\ntls_level = \"encrypt\"\n\
         [delivery.domains.\"portal.test\"]\nroute = \"127.0.0.1:{sink_port}\"\ntls_level = \"encrypt\"\n"
    );
    // The harness has no hook for extra sections; they ride after the `[delivery]` body.
    // The webhook and syslog use their defaults: all events, no addresses.
    delivery += &format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
         [[webhook]]\nurl = \"http://127.0.0.1:{hook_port}/phigate\"\nsecret_file = \"{}\"\n",
        hook_secret.display()
    );
    if let Some(s) = &syslog {
        delivery += &format!("\n[audit]\nsyslog = \"udp://127.0.0.1:{}\"\n", s.port);
    }
    // Breach prevention (#17) on, so its outputs are checked too: a recipient limit one
    // canary recipient runs into, and alerts that fire on this mix (volume, DLP burst).
    // The HTTPS API (#14) on too: its answers, problem documents and events are checked.
    let api_port = free_port();
    delivery += &format!("\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n");
    // The secure portal (#15): its notification, pages before verification and logs.
    let portal_port = free_port();
    delivery += &format!(
        "\n[portal]\nlisten = \"127.0.0.1:{portal_port}\"\npublic_url = \"https://127.0.0.1:{portal_port}\"\n"
    );
    delivery += "\n[limits]\nrecipients_per_day = 4\n\n[alerts]\nvolume_factor = 1.0\nvolume_min_messages = 0\ndlp_findings = 1\n";
    let mut gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["ip"])],
        delivery: Some(delivery),
        policy: Some(POLICY.to_string()),
        log_level: "debug",
        control_socket: true,
        ..GwOpts::default()
    });
    // The harness discards stdout; run the daemon again on the same configuration with
    // both streams captured.
    gw.stop();
    let out_path = gw.tmp.path().join("stdout.log");
    let err_path = gw.tmp.path().join("stderr.log");
    let daemon = Proc(
        Command::new(BIN)
            .args([
                "serve",
                "--log-level",
                "debug",
                "--log-format",
                "json",
                "--config",
            ])
            .arg(&gw.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("spawn phigate"),
    );
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    assert!(
        wait_for("phigate ready", Duration::from_secs(20), || contains(
            &read(&err_path),
            b"phigate ready"
        )),
        "phigate not ready: {}",
        String::from_utf8_lossy(&read(&err_path))
    );
    assert!(
        contains(&read(&err_path), b"\"level\":\"DEBUG\""),
        "expected JSON log lines at debug level (what the journal stores)"
    );

    let pcap = work.path().join("lo.pcapng");
    let tshark = capture(sink_port, &pcap, &work.path().join("tshark.log"));
    let inbox = work.path().join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let (cert, key) = gw.pki.new_server_cert();
    std::fs::write(work.path().join("mx.pem"), cert).expect("mx cert");
    std::fs::write(work.path().join("mx.key"), key).expect("mx key");
    let sink_log = work.path().join("sink.log");
    let _sink = Proc(
        Command::new(PYTHON)
            .arg(peers_dir().join("tls_sink.py"))
            .arg(sink_port.to_string())
            .arg(work.path().join("mx.pem"))
            .arg(work.path().join("mx.key"))
            .arg(&inbox)
            .stdout(std::fs::File::create(&sink_log).expect("sink log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tls_sink.py"),
    );
    assert!(
        wait_for("receiver", Duration::from_secs(20), || {
            std::fs::read_to_string(&sink_log).is_ok_and(|s| s.contains("ready"))
        }),
        "tls_sink.py did not start (is python3-aiosmtpd installed?)"
    );

    let port = gw.port("smtps");
    let ca = gw.pki.ca.clone();
    let good = format!("{LOCAL}@x.test");
    let refused = format!("{LOCAL}@blocked.test");

    // 1. Delivered to one recipient, bounced (550 at the receiver) for another, and one
    //    recipient refused at RCPT by the policy.
    let t = transaction(
        port,
        &ca,
        &[good.clone(), BOUNCE.to_string(), refused.clone()],
        &message("Please file with the chart."),
    );
    assert!(t.line(1).starts_with("250"), "MAIL: {:?}", t.lines(1));
    assert!(t.line(2).starts_with("250"), "RCPT good: {:?}", t.lines(2));
    assert!(
        t.line(3).starts_with("250"),
        "RCPT bounce: {:?}",
        t.lines(3)
    );
    assert!(t.line(4).starts_with('5'), "RCPT blocked: {:?}", t.lines(4));
    assert!(
        t.line(6).starts_with("250"),
        "end of DATA: {:?}",
        t.lines(6)
    );

    // 2. Rejected by policy at the end of DATA.
    let t = transaction(
        port,
        &ca,
        std::slice::from_ref(&good),
        &message(&format!("SSN {SSN}")),
    );
    assert!(
        t.line(4).starts_with('5'),
        "policy reject: {:?}",
        t.lines(4)
    );

    // 3. Quarantined by policy (accepted, held encrypted in the spool).
    let t = transaction(
        port,
        &ca,
        std::slice::from_ref(&good),
        &message(&format!("card {CARD}")),
    );
    assert!(t.line(4).starts_with("250"), "quarantine: {:?}", t.lines(4));

    // The receiver gets message 1 and the DSN for the bounced recipient.
    let envelopes = || -> Vec<(PathBuf, Value)> {
        files_under(&inbox)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| {
                let v = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                Some((p.with_extension("eml"), v))
            })
            .collect()
    };
    assert!(
        wait_for("delivery and DSN", Duration::from_secs(60), || envelopes()
            .len()
            >= 2),
        "receiver got {} messages; phigate log:\n{}",
        envelopes().len(),
        String::from_utf8_lossy(&read(&err_path))
    );
    // Positive signal that nothing else is on its way: the daemon logged both deliveries
    // (message 1 and the DSN) and queued one DSN only; message 2 was refused and message 3
    // is held.
    let delivered = || {
        String::from_utf8_lossy(&read(&err_path))
            .lines()
            .filter(|l| l.contains("delivery attempt") && l.contains("\"result\":\"delivered\""))
            .count()
    };
    assert!(
        wait_for(
            "both deliveries logged",
            Duration::from_secs(60),
            || delivered() >= 2
        ),
        "phigate log:\n{}",
        String::from_utf8_lossy(&read(&err_path))
    );
    assert_eq!(delivered(), 2, "deliveries logged");
    assert_eq!(
        String::from_utf8_lossy(&read(&err_path))
            .matches("DSN queued")
            .count(),
        1,
        "DSNs queued"
    );
    let got = envelopes();
    assert_eq!(got.len(), 2, "exactly the message and its DSN: {got:?}");
    let (msg_path, msg_env) = got
        .iter()
        .find(|(_, v)| v["from"] == SENDER)
        .unwrap_or_else(|| panic!("no delivered message: {got:?}"));
    let (dsn_path, dsn_env) = got
        .iter()
        .find(|(_, v)| v["from"] == "<>")
        .unwrap_or_else(|| panic!("no DSN (null sender): {got:?}"));
    assert_eq!(msg_env["to"], serde_json::json!([good]));
    assert_eq!(msg_env["tls"], true);
    assert_eq!(dsn_env["to"], serde_json::json!([SENDER]));
    assert_eq!(dsn_env["tls"], true);

    // The canaries really went through: the receiver's copy has each of them.
    let delivered = std::fs::read(msg_path).expect("delivered copy");
    for (name, c) in all_canaries() {
        assert!(
            !leaks(&delivered, &[(name, c)]).is_empty(),
            "canary {name} missing from the delivered copy: the test would prove nothing"
        );
    }

    // The DSN names the failed recipient and nothing of the content.
    let dsn = std::fs::read(dsn_path).expect("DSN");
    let dsn_text = String::from_utf8_lossy(&dsn);
    assert!(
        dsn_text.contains(BOUNCE),
        "DSN names the failure: {dsn_text}"
    );
    assert!(dsn_text.contains("5.1.1"), "DSN status: {dsn_text}");
    let found = leaks(&dsn, &all_canaries());
    assert!(
        found.is_empty(),
        "canaries in the DSN: {found:?}\n{dsn_text}"
    );

    // Webhooks: every final outcome of the mix arrives, without a canary in the request.
    let statuses = || -> Vec<String> {
        posts
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|p| serde_json::from_slice::<Value>(&p.body).ok())
            .filter_map(|v| {
                v["type"]
                    .as_str()
                    .map(|t| t.trim_start_matches("message.").to_string())
            })
            .collect()
    };
    assert!(
        wait_for("webhooks", Duration::from_secs(30), || {
            let s = statuses();
            ["delivered", "bounced", "quarantined"]
                .iter()
                .all(|e| s.iter().any(|x| x == e))
        }),
        "webhook events: {:?}; phigate log:\n{}",
        statuses(),
        String::from_utf8_lossy(&read(&err_path))
    );
    for p in posts.lock().expect("lock").iter() {
        let body = String::from_utf8_lossy(&p.body);
        assert!(p.head.starts_with("POST /phigate "), "{}", p.head);
        let raw = [p.head.as_bytes(), b"\r\n", &p.body].concat();
        let found = leaks(&raw, &all_canaries());
        assert!(
            found.is_empty(),
            "canaries in a webhook POST: {found:?}\n{}\n{body}",
            p.head
        );
        // include_addresses is off: no address of any kind in the body.
        assert!(!body.contains('@'), "address in a webhook body: {body}");
    }

    // 4. A sending limit refuses a canary recipient at RCPT (3 of 4 recipients a day are
    //    used: messages 1 and 3; the rejected message 2 is not counted, nor the DSN).
    let t = py(serde_json::json!({
        "port": port, "mode": "implicit", "cafile": ca, "servername": "localhost",
        "steps": [
            send("EHLO ehr.clinic.test\r\n"),
            send(&format!("MAIL FROM:<{SENDER}>\r\n")),
            send(&format!("RCPT TO:<{good}>\r\n")),
            send(&format!("RCPT TO:<{LOCAL}.2@x.test>\r\n")),
            send("RSET\r\n"),
            send("QUIT\r\n"),
        ],
    }));
    assert!(
        t.line(2).starts_with("250"),
        "RCPT within the limit: {:?}",
        t.lines(2)
    );
    assert!(
        t.line(3).starts_with("451 4.7.1"),
        "RCPT over the limit: {:?}",
        t.lines(3)
    );

    // 5. The same content through the HTTPS API: a message delivered over TLS to the
    //    receiver, a refused request carrying canaries, and the events page.
    let api_key = gw
        .cli_ok(&["api-key", "create", "leak", "--scope", "send,read"])
        .trim()
        .to_string();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let api_msg = serde_json::json!({
        "from": SENDER, "to": [good],
        "subject": format!("Results {SUBJECT}"),
        "text": format!("Patient follow-up {BODY}."),
        "attachments": [{"filename": format!("{ATT_NAME}.txt"), "content_type": "text/plain",
                         "content_base64": b64(&format!("lab sheet {ATT_CONTENT}\n"))}],
        "metadata": {"order": "A-1"},
    });
    let mut bad = api_msg.clone();
    bad["unexpected"] = serde_json::json!(SUBJECT);
    // A template request whose values carry canaries (no such template: 422).
    let templated = serde_json::json!({
        "from": SENDER, "to": [good], "template": "none",
        "template_values": {"note": BODY, "file": ATT_CONTENT},
    });
    let keyed = serde_json::json!({"Idempotency-Key": "leak-1"});
    let spec = serde_json::json!({
        "port": api_port, "host": HOSTNAME, "ca": ca,
        "requests": [
            {"method": "POST", "path": "/v1/messages", "key": api_key, "body": api_msg,
             "headers": keyed},
            {"method": "POST", "path": "/v1/messages", "key": api_key, "body": bad},
            {"method": "POST", "path": "/v1/messages", "key": "phg_nope", "body": api_msg},
            {"method": "POST", "path": "/v1/messages", "key": api_key, "body": bad,
             "headers": keyed},
            {"method": "POST", "path": "/v1/messages", "key": api_key, "body": templated},
            {"method": "POST", "path": "/v1/messages/batch", "key": api_key,
             "body": {"messages": [bad, templated]}},
        ],
    });
    let answers = api_call(&spec);
    assert_eq!(answers[0]["status"], 202, "API send: {}", answers[0]);
    assert_eq!(answers[1]["status"], 400, "API bad field: {}", answers[1]);
    assert_eq!(answers[2]["status"], 401, "API bad key: {}", answers[2]);
    assert_eq!(answers[3]["status"], 409, "API key reuse: {}", answers[3]);
    assert_eq!(answers[4]["status"], 422, "API template: {}", answers[4]);
    assert_eq!(answers[5]["status"], 200, "API batch: {}", answers[5]);
    let api_id = answers[0]["body"]["id"]
        .as_str()
        .expect("API id")
        .to_string();
    // The 202 names the recipients by contract; nothing else of the content.
    let content_canaries: Vec<_> = all_canaries()
        .into_iter()
        .filter(|(n, _)| *n != "recipient-local-part")
        .collect();
    let found = leaks(answers[0].to_string().as_bytes(), &content_canaries);
    assert!(found.is_empty(), "canaries in the 202: {found:?}");
    for a in &answers[1..] {
        let found = leaks(a.to_string().as_bytes(), &all_canaries());
        assert!(found.is_empty(), "canaries in a problem: {found:?}\n{a}");
        assert!(!a.to_string().contains('@'), "address in a problem: {a}");
    }
    let delivered_api = || {
        envelopes()
            .iter()
            .any(|(p, _)| contains(&std::fs::read(p).unwrap_or_default(), api_id.as_bytes()))
    };
    assert!(
        wait_for(
            "API message delivered",
            Duration::from_secs(60),
            delivered_api
        ),
        "the API message did not reach the receiver"
    );
    let events = api_call(&serde_json::json!({
        "port": api_port, "host": HOSTNAME, "ca": ca,
        "requests": [{"path": "/v1/events?limit=500", "key": api_key},
                     {"path": format!("/v1/messages/{api_id}"), "key": api_key}],
    }));
    assert_eq!(events[0]["status"], 200, "{}", events[0]);
    let page = events[0]["body"].to_string();
    assert!(page.contains("message.delivered"), "events: {page}");
    let found = leaks(page.as_bytes(), &all_canaries());
    assert!(found.is_empty(), "canaries in events: {found:?}\n{page}");
    assert!(!page.contains('@'), "address in events: {page}");
    let found = leaks(events[1].to_string().as_bytes(), &content_canaries);
    assert!(found.is_empty(), "canaries in a status: {found:?}");

    // 6. The same content to a recipient policy sends to the secure portal: the
    //    notification and the code mail (delivered to the receiver), and every page
    //    before verification, carry no canary. Sent through the API: the SMTP identity is
    //    at its recipient limit.
    let portal_rcpt = format!("{LOCAL}@portal.test");
    let mut portal_msg = api_msg.clone();
    portal_msg["to"] = serde_json::json!([portal_rcpt]);
    let answers = api_call(&serde_json::json!({
        "port": api_port, "host": HOSTNAME, "ca": ca,
        "requests": [{"method": "POST", "path": "/v1/messages", "key": api_key, "body": portal_msg}],
    }));
    assert_eq!(
        answers[0]["status"], 202,
        "API send to the portal: {}",
        answers[0]
    );
    let to_portal = |n: usize| {
        let mut v: Vec<PathBuf> = envelopes()
            .into_iter()
            .filter(|(_, e)| e["to"] == serde_json::json!([portal_rcpt]))
            .map(|(p, _)| p)
            .collect();
        v.sort();
        (v.len() >= n).then(|| v[n - 1].clone())
    };
    assert!(
        wait_for("portal notification", Duration::from_secs(60), || {
            to_portal(1).is_some()
        }),
        "no portal notification; phigate log:\n{}",
        String::from_utf8_lossy(&read(&err_path))
    );
    let notice = std::fs::read(to_portal(1).expect("notice")).expect("read notice");
    let found = leaks(&notice, &content_canaries);
    assert!(
        found.is_empty(),
        "canaries in the portal notification: {found:?}"
    );
    let notice_text = mail_parser::MessageParser::default()
        .parse(&notice)
        .and_then(|m| m.body_text(0).map(|t| t.to_string()))
        .unwrap_or_default();
    let link = notice_text
        .split_whitespace()
        .find(|w| w.contains("/m/"))
        .unwrap_or_else(|| panic!("no link in the notification: {notice_text}"))
        .to_string();
    let jar = work.path().join("portal.jar");
    let curl = |url: &str, form: Option<&str>| -> (u16, Vec<u8>) {
        let mut c = Command::new("curl");
        c.args(["-s", "-i", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&ca)
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar);
        if let Some(f) = form {
            c.args(["--data-raw", f]);
        }
        let out = c.arg(url).output().expect("curl").stdout;
        let text = String::from_utf8_lossy(&out);
        let code = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        (code, out)
    };
    let (code, landing) = curl(&link, None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&landing));
    let page = String::from_utf8_lossy(&landing).into_owned();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string();
    let mut pages = vec![landing];
    let (code, sent) = curl(&format!("{link}/code"), Some(&format!("csrf={csrf}")));
    assert_eq!(code, 200);
    pages.push(sent);
    for (url, form) in [
        (format!("{link}/view"), None),
        (format!("{link}/attachments/0"), None),
        (
            format!("{link}/verify"),
            Some(format!("csrf={csrf}&code=000000")),
        ),
        (
            format!("{link}/reply"),
            Some(format!("csrf={csrf}&text={BODY}")),
        ),
        (format!("{link}/code"), Some("csrf=forged".to_string())),
    ] {
        let (code, body) = curl(&url, form.as_deref());
        assert!((400..500).contains(&code), "{url}: {code}");
        pages.push(body);
    }
    for p in &pages {
        let found = leaks(p, &all_canaries());
        assert!(
            found.is_empty(),
            "canaries in a portal page: {found:?}\n{}",
            String::from_utf8_lossy(p)
        );
        assert!(
            !String::from_utf8_lossy(p).contains("portal.test"),
            "the address on a page"
        );
    }
    assert!(
        wait_for("code mail", Duration::from_secs(60), || to_portal(2)
            .is_some()),
        "no code mail"
    );
    let code_mail = std::fs::read(to_portal(2).expect("code mail")).expect("read");
    let found = leaks(&code_mail, &content_canaries);
    assert!(found.is_empty(), "canaries in the code mail: {found:?}");
    assert!(contains(&code_mail, b"Code: "), "not the code mail");

    // Metrics: the scrape shows the mix went through, and no canary.
    let base = format!("http://127.0.0.1:{metrics_port}");
    let (status, scrape) = http_get(&format!("{base}/metrics"));
    assert_eq!(status, 200, "{scrape}");
    let count = |series: &str| metric_sample(&scrape, series).unwrap_or(0.0);
    assert!(
        count("phigate_messages_total{outcome=\"accepted\",reason=\"accept\"}") >= 1.0
            && count("phigate_outcomes_total{event=\"delivered\"}") >= 1.0
            && count("phigate_outcomes_total{event=\"bounced\"}") >= 1.0
            && count("phigate_outcomes_total{event=\"quarantined\"}") >= 1.0
            && count("phigate_security_alerts_total{kind=\"dlp_burst\"}") >= 1.0
            && count("phigate_security_alerts_total{kind=\"volume\"}") >= 1.0
            && count("phigate_limit_refusals_total{limit=\"recipients_per_day\",stage=\"rcpt\"}",)
                >= 1.0,
        "the scrape does not show the mix:\n{scrape}"
    );
    let (healthz, health) = http_get(&format!("{base}/healthz"));
    let (readyz, ready) = http_get(&format!("{base}/readyz"));
    assert_eq!((healthz, readyz), (200, 200), "{health}\n{ready}");
    for (what, text) in [
        ("/metrics", &scrape),
        ("/healthz", &health),
        ("/readyz", &ready),
    ] {
        let found = leaks(text.as_bytes(), &all_canaries());
        assert!(found.is_empty(), "canaries in {what}: {found:?}\n{text}");
    }

    // Syslog: wait for the last records of the mix before stopping the daemon.
    if let Some(s) = &syslog {
        let kinds = [
            "message_received",
            "policy_decision",
            "delivered",
            "bounced",
            "dsn_sent",
            "security_alert",
            "limit_exceeded",
        ];
        let has_all = || {
            let text = std::fs::read_to_string(&s.out).unwrap_or_default();
            kinds
                .iter()
                .all(|k| text.contains(&format!(" phigate {k} ")))
        };
        assert!(
            wait_for("syslog records", Duration::from_secs(20), has_all),
            "rsyslogd did not get the audit records {kinds:?}:\n{}",
            std::fs::read_to_string(&s.out).unwrap_or_default()
        );
    }

    // Stop everything so the logs and stores are complete and flushed.
    drop(daemon);
    if let Some(mut s) = syslog {
        // SIGTERM: rsyslogd closes its output file.
        let _ = Command::new("kill")
            .args(["-TERM", &s.proc.0.id().to_string()])
            .status();
        let _ = wait_for("rsyslogd exit", Duration::from_secs(10), || {
            s.proc.0.try_wait().ok().flatten().is_some()
        });
        let out = std::fs::read(&s.out).expect("syslog output");
        let text = String::from_utf8_lossy(&out);
        // What rsyslogd parsed: RFC 5424 version 1, facility 13 (log audit), severity 6,
        // app-name phigate; then the message as received.
        let records: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("1 13 6 phigate "))
            .collect();
        assert!(
            records.len() >= 5 && records.iter().all(|l| l.contains("[audit@32473 seq=\"")),
            "no RFC 5424 audit records from phigate:\n{text}"
        );
        let found = leaks(&out, &all_canaries());
        assert!(found.is_empty(), "canaries in syslog: {found:?}\n{text}");
    }
    if let Some(mut t) = tshark {
        // SIGINT: tshark finishes writing the capture file.
        let _ = Command::new("kill")
            .args(["-INT", &t.0.id().to_string()])
            .status();
        let _ = wait_for("tshark exit", Duration::from_secs(10), || {
            t.0.try_wait().ok().flatten().is_some()
        });
        let cap = std::fs::read(&pcap).expect("capture file");
        assert!(
            contains(&cap, b"STARTTLS"),
            "capture has no SMTP traffic: capturing did not work"
        );
        let found = leaks(&cap, &all_canaries());
        assert!(
            found.is_empty(),
            "canaries on the wire in plaintext: {found:?}"
        );
    }

    let stderr = read(&err_path);
    let stdout = read(&out_path);
    assert!(
        contains(&stderr, b"DEBUG"),
        "the run was not at debug level: {}",
        String::from_utf8_lossy(&stderr)
    );
    for (stream, bytes) in [("stderr", &stderr), ("stdout", &stdout)] {
        let found = leaks(bytes, &all_canaries());
        assert!(
            found.is_empty(),
            "canaries in phigate's {stream}: {found:?}\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Nothing under data_dir (spool, audit store, keys, anything else) in plaintext.
    let files = files_under(&gw.data);
    assert!(!files.is_empty(), "data_dir is empty");
    for f in files {
        let found = leaks(&std::fs::read(&f).unwrap_or_default(), &all_canaries());
        assert!(found.is_empty(), "canaries in {}: {found:?}", f.display());
    }
}

/// Requests through the independent HTTPS client (tests/peers/api_client.py).
fn api_call(spec: &Value) -> Vec<Value> {
    let out = common::run_python(&peers_dir().join("api_client.py"), spec);
    serde_json::from_value(out).expect("api client output")
}
