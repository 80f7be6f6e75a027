//! Who may relay: SMTP AUTH (PLAIN, LOGIN) against users made with `phigate user add`,
//! TLS client certificates, allowed networks; and refusal without any of them.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;

const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required";
const AUTH_OK: &str = "235 2.7.0 Authentication successful";
const AUTH_BAD: &str = "535 5.7.8 Authentication credentials invalid";

fn password_only() -> GwOpts {
    GwOpts {
        listeners: vec![
            listener("smtps", "implicit", &["password"]),
            listener("submission", "starttls", &["password"]),
            listener("iponly", "implicit", &["ip"]),
        ],
        users: vec!["alice"],
        ..GwOpts::default()
    }
}

fn transaction() -> Vec<serde_json::Value> {
    vec![
        send("MAIL FROM:<sender@clinic.test>\r\n"),
        send_n("RCPT TO:<patient@example.net>\r\nDATA\r\n", 2),
        send("Subject: auth\r\n\r\nhi\r\n.\r\n"),
    ]
}

#[test]
fn auth_plain_and_login_succeed_and_wrong_passwords_fail() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(password_only());
    let mut steps = vec![
        send("EHLO ehr.clinic.test\r\n"),
        send("MAIL FROM:<sender@clinic.test>\r\n"),
        send(&auth_plain("alice", "wrong password")),
        send("AUTH LOGIN\r\n"),
        send(&format!("{}\r\n", b64("alice"))),
        send(&format!("{}\r\n", b64(PASSWORD))),
        send(&auth_plain("alice", PASSWORD)),
    ];
    steps.extend(transaction());
    let t = py(gw.peer("smtps", steps));
    let ehlo = &t.steps[0].replies[0].lines;
    assert!(ehlo.iter().any(|l| l == "250-AUTH PLAIN LOGIN"), "{ehlo:?}");
    assert_eq!(
        t.line(1),
        AUTH_REQUIRED,
        "password-only listener let MAIL through"
    );
    assert_eq!(t.line(2), AUTH_BAD);
    assert_eq!(t.line(3), "334 VXNlcm5hbWU6");
    assert_eq!(t.line(4), "334 UGFzc3dvcmQ6");
    assert_eq!(t.line(5), AUTH_OK);
    assert_eq!(t.line(6), "503 5.5.1 Already authenticated");
    assert_eq!(t.line(7), "250 2.1.0 Ok");
    let id = t.steps[9].replies[0].queued_id().expect("queued");
    let (eml, env) = gw.message(&id);
    assert_eq!(
        env["auth"],
        json!({"method": "password", "identity": "alice"})
    );
    assert!(split_received(&eml).0.contains("with ESMTPSA"));

    // PLAIN succeeds on its own, and LOGIN with a wrong password fails.
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("AUTH LOGIN\r\n"),
            send(&format!("{}\r\n", b64("alice"))),
            send(&format!("{}\r\n", b64("not the password"))),
            send(&auth_plain("alice", PASSWORD)),
            send(&auth_plain("mallory", PASSWORD)),
        ],
    ));
    assert_eq!(t.line(3), AUTH_BAD);
    assert_eq!(t.line(4), AUTH_OK);
    assert_eq!(t.line(5), "503 5.5.1 Already authenticated");
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&auth_plain("mallory", PASSWORD)),
            send("AUTH CRAM-MD5\r\n"),
        ],
    ));
    assert_eq!(
        t.line(1),
        AUTH_BAD,
        "unknown user must fail like a wrong password"
    );
    assert_eq!(t.line(2), "504 5.5.4 Unrecognized authentication type");
}

#[test]
fn swaks_authenticates_with_login_over_starttls() {
    if !require_tool("swaks") {
        return;
    }
    let gw = Gateway::start(password_only());
    let run = |password: &str| {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port"])
            .arg(gw.port("submission").to_string())
            .args(["--tls", "--tls-verify", "--tls-ca-path"])
            .arg(&gw.pki.ca)
            .args([
                "--auth",
                "LOGIN",
                "--auth-user",
                "alice",
                "--auth-password",
                password,
            ])
            .args([
                "--from",
                "sender@clinic.test",
                "--to",
                "patient@example.net",
            ])
            .output()
            .expect("run swaks");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ok = run(PASSWORD);
    assert!(
        ok.contains("<~  235 2.7.0 Authentication successful"),
        "{ok}"
    );
    assert!(ok.contains("250 2.0.0 Ok: queued as"), "{ok}");
    let bad = run("definitely wrong");
    assert!(
        bad.contains("<~* 535 5.7.8 Authentication credentials invalid"),
        "{bad}"
    );
    assert!(!bad.contains("queued as"), "{bad}");
    assert_eq!(gw.messages().len(), 1);
}

#[test]
fn repeated_auth_failures_are_cut_off() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut opts = password_only();
    opts.auth_extra = "max_failures = 3".into();
    let gw = Gateway::start(opts);
    let wrong = auth_plain("alice", "wrong password");
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&wrong),
            send(&wrong),
            send(&wrong),
            send("NOOP\r\n"),
        ],
    ));
    assert!(!gw.log().contains("wrong password"), "password in the log");
    assert_eq!(t.line(1), AUTH_BAD);
    assert_eq!(t.line(2), AUTH_BAD);
    assert_eq!(
        t.line(3),
        "421 4.7.0 Too many authentication failures, try again later"
    );
    assert!(
        t.steps[4].closed && t.steps[4].replies.is_empty(),
        "session not closed"
    );
    // Even the right password is refused from a locked-out address.
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&auth_plain("alice", PASSWORD)),
            send("NOOP\r\n"),
        ],
    ));
    assert_eq!(
        t.line(1),
        "421 4.7.0 Too many authentication failures, try again later"
    );
    assert!(t.steps[2].closed && t.steps[2].replies.is_empty());
}

#[test]
fn auth_is_refused_where_not_offered() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(password_only());
    let t = py(gw.peer(
        "iponly",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send(&auth_plain("alice", PASSWORD)),
        ],
    ));
    assert!(!t.steps[0].replies[0]
        .lines
        .iter()
        .any(|l| l.contains("AUTH")));
    assert_eq!(t.line(1), "502 5.5.1 AUTH not available on this listener");
}

#[test]
fn network_authorisation_by_source_address() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(password_only());
    let mut steps = vec![send("EHLO ehr.clinic.test\r\n")];
    steps.extend(transaction());
    let t = py(gw.peer("iponly", steps.clone()));
    assert_eq!(t.line(1), "250 2.1.0 Ok");
    let id = t.steps[3].replies[0].queued_id().expect("queued");
    assert_eq!(
        gw.message(&id).1["auth"],
        json!({"method": "ip", "identity": "127.0.0.1"})
    );
    // 127.0.0.2 is outside allow_networks = 127.0.0.1/32.
    let mut spec = gw.peer("iponly", steps.clone());
    spec["source"] = json!("127.0.0.2");
    let t = py(spec);
    assert_eq!(t.line(1), AUTH_REQUIRED);
    // A password-only listener ignores allow_networks even for 127.0.0.1.
    let t = py(gw.peer("smtps", steps));
    assert_eq!(t.line(1), AUTH_REQUIRED);
    assert_eq!(t.line(2), "503 5.5.1 Need MAIL before RCPT");
    assert_eq!(gw.messages().len(), 1);
}

fn cert_gateway(allow: &str) -> Gateway {
    Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["client-cert"])],
        client_ca: true,
        auth_extra: allow.to_string(),
        ..GwOpts::default()
    })
}

fn with_cert(gw: &Gateway, cert: &std::path::Path, key: &std::path::Path) -> serde_json::Value {
    let mut steps = vec![send("EHLO ehr.clinic.test\r\n")];
    steps.extend(transaction());
    let mut spec = gw.peer("smtps", steps);
    spec["cert"] = json!(cert);
    spec["key"] = json!(key);
    spec
}

#[test]
fn client_certificate_authorisation() {
    if !require_tool(PYTHON) || !require_tool("openssl") {
        return;
    }
    let gw = cert_gateway("");
    let t = py(with_cert(&gw, &gw.pki.client_cert, &gw.pki.client_key));
    assert_eq!(t.line(1), "250 2.1.0 Ok");
    let id = t.steps[3].replies[0].queued_id().expect("queued");
    let (_, env) = gw.message(&id);
    assert_eq!(
        env["auth"],
        json!({"method": "client-cert", "identity": "ehr.clinic.test"})
    );
    let fp = pem_fingerprint(&gw.pki.client_cert);
    assert_eq!(env["tls"]["client_cert_sha256"], json!(fp));

    // No certificate: TLS works, submission does not.
    let mut steps = vec![send("EHLO ehr.clinic.test\r\n")];
    steps.extend(transaction());
    let t = py(gw.peer("smtps", steps));
    assert_eq!(t.line(1), AUTH_REQUIRED);

    // A certificate from another CA never gets a session.
    let t = py(with_cert(&gw, &gw.pki.rogue_cert, &gw.pki.rogue_key));
    let got_250 = t
        .steps
        .iter()
        .flat_map(|s| &s.replies)
        .any(|r| r.code == 250 || r.code == 354);
    assert!(!got_250, "rogue certificate was served: {:?}", t.raw);
    assert!(
        t.greeting.is_none() || t.line(1) == AUTH_REQUIRED,
        "{:?}",
        t.raw
    );
    assert_eq!(gw.messages().len(), 1);

    // Chains to the client CA but is not on the allow list.
    let gw = cert_gateway("client_cert_allow = [\"other.clinic.test\"]");
    let t = py(with_cert(&gw, &gw.pki.client_cert, &gw.pki.client_key));
    assert_eq!(t.line(1), AUTH_REQUIRED);
    // On the allow list by fingerprint.
    let gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["client-cert"])],
        client_ca: true,
        auth_extra_pki: Some(Box::new(|pki: &Pki| {
            format!(
                "client_cert_allow = [\"sha256:{}\"]",
                pem_fingerprint(&pki.client_cert)
            )
        })),
        ..GwOpts::default()
    });
    let t = py(with_cert(&gw, &gw.pki.client_cert, &gw.pki.client_key));
    assert_eq!(t.line(1), "250 2.1.0 Ok");
    assert!(t.steps[3].replies[0].queued_id().is_some());
}
