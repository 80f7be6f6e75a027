//! The secure portal end to end, with real peers: phigate relays to two receiving MTAs
//! (aiosmtpd, `tests/peers/tls_sink.py`) that cannot be reached over verified TLS — one
//! offers no STARTTLS, one has a certificate from an unknown CA — so with
//! `on_tls_failure = "portal"` each recipient gets only a PHI-free notification. curl
//! then walks the pickup: landing page, code request, the code read from the second
//! mail, verification, the message, an attachment and a secure reply (which reaches the
//! sender's MTA over verified TLS). Wrong codes lock, revocation answers 410, expiry
//! crypto-shreds the copy, and the canary never shows before verification: not in the
//! notifications, the pages, the log or the audit trail's clear fields.

mod common;
use common::browser::{browser_available, browser_run, png_check};
use common::sink::Sink;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CANARY: &str = "Kp4PortalCanary7Zq";
const ATTACHMENT: &[u8] = b"lab values: Kp4PortalCanary7Zq hemoglobin 9.1\n";

/// The decoded text body of a mail.
fn text_of(raw: &[u8]) -> String {
    let m = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("parse mail");
    m.body_text(0).map(|t| t.to_string()).unwrap_or_default()
}

fn subject_of(raw: &[u8]) -> String {
    let m = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("parse mail");
    m.subject().unwrap_or("").to_string()
}

/// The pickup link in a notification.
fn link_of(raw: &[u8]) -> String {
    let t = text_of(raw);
    t.split_whitespace()
        .find(|w| w.starts_with("https://") && w.contains("/m/"))
        .unwrap_or_else(|| panic!("no link in notification: {t}"))
        .to_string()
}

fn code_of(raw: &[u8]) -> String {
    let t = text_of(raw);
    t.lines()
        .find_map(|l| l.trim().strip_prefix("Code: "))
        .unwrap_or_else(|| panic!("no `Code: ` line: {t}"))
        .trim()
        .to_string()
}

fn assert_no_canary(what: &str, hay: &[u8]) {
    for (form, needle) in canary::forms(CANARY) {
        assert!(!canary::contains(hay, &needle), "canary ({form}) in {what}");
    }
}

/// One HTTP exchange with the portal through curl (an independent client).
struct Resp {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The hidden CSRF field of the page's (first) form.
    fn csrf(&self) -> String {
        let t = self.text();
        let at = t.find("name=\"csrf\" value=\"").expect("csrf field");
        t[at + 19..].split('"').next().unwrap_or("").to_string()
    }
}

struct Browser {
    ca: PathBuf,
    jar: PathBuf,
    work: PathBuf,
}

impl Browser {
    fn new(work: &Path, ca: &Path, name: &str) -> Browser {
        Browser {
            ca: ca.to_path_buf(),
            jar: work.join(format!("{name}.jar")),
            work: work.to_path_buf(),
        }
    }

    fn go(&self, url: &str, form: Option<&str>) -> Resp {
        let h = self.work.join("h.txt");
        let b = self.work.join("b.bin");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "20", "-A", "portal-test/1"])
            .arg("--cacert")
            .arg(&self.ca)
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .arg("-D")
            .arg(&h)
            .arg("-o")
            .arg(&b)
            .args(["-w", "%{http_code}"]);
        if let Some(f) = form {
            cmd.args(["--data-raw", f]);
        }
        let out = cmd.arg(url).output().expect("run curl");
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        Resp {
            status,
            headers: std::fs::read_to_string(&h).unwrap_or_default(),
            body: std::fs::read(&b).unwrap_or_default(),
        }
    }
}

fn eml(to: &[&str]) -> Vec<u8> {
    use base64::Engine;
    let att = base64::engine::general_purpose::STANDARD.encode(ATTACHMENT);
    format!(
        "From: Dr Lee <dr@clinic.test>\r\nTo: {}\r\nSubject: Lab result {CANARY}\r\n\
         Message-ID: <lab-1@clinic.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <p>Your result: {CANARY}</p><script>window.__pwned=1</script>\
         <img src=\"https://evil.example/track.png\"><img src=x onerror=\"alert(1)\">\
         <a id=\"js\" href=\"javascript:alert(2)\">click</a>\
         <style>body{{background:url(https://evil.example/bg.png)}}</style>\
         <div style=\"background:url(https://evil.example/div.png)\">styled</div>\
         <iframe src=\"https://evil.example/frame\"></iframe>\
         <meta http-equiv=\"refresh\" content=\"0;url=https://evil.example/\">\
         <form action=\"https://evil.example/steal\"><input name=\"q\"></form>\r\n\
         --b1\r\nContent-Type: text/plain; name=\"labs.txt\"\r\n\
         Content-Disposition: attachment; filename=\"labs.txt\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{att}\r\n--b1--\r\n",
        to.join(", ")
    )
    .into_bytes()
}

struct Lab {
    gw: Gateway,
    hooks: std::sync::Arc<std::sync::Mutex<Vec<Post>>>,
    work: tempfile::TempDir,
    plain: Sink,
    badcert: Sink,
    clinic: Sink,
    portal_port: u16,
    api_port: u16,
    /// The TXT record of the key that signs mail From clinic.test (notices included).
    dkim: (String, String),
}

/// A 1x1 PNG: the organisation's logo on the pages.
const LOGO_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

fn lab(link_ttl: &str, policy: Option<&str>, template: Option<&str>) -> Option<Lab> {
    if !require_tool("python3") || !require_tool("curl") {
        return None;
    }
    let work = tempfile::tempdir().expect("tempdir");
    // The receiving MTAs' own PKI: the clinic's MX chains to a CA phigate is told to
    // trust (extra_ca_file); the "bad" one presents a certificate from a rogue CA.
    let mx_pki = Pki::new(&work.path().join("mx-pki"));
    let plain = Sink::start(work.path(), "plain", None);
    let badcert = Sink::start(
        work.path(),
        "badcert",
        Some((&mx_pki.rogue_cert, &mx_pki.rogue_key)),
    );
    let clinic = Sink::start(work.path(), "clinic", Some((&mx_pki.cert, &mx_pki.key)));
    let portal_port = free_port();
    let api_port = free_port();
    let (hook_port, hooks) = http_receiver(|_| "200 OK");
    let secret = work.path().join("hook.secret");
    std::fs::write(&secret, "portal-hook-secret\n").expect("hook secret");
    let template_line = match template {
        Some(t) => {
            let f = work.path().join("notification.txt");
            std::fs::write(&f, t).expect("template");
            format!("notification_template = \"{}\"\n", f.display())
        }
        None => String::new(),
    };
    use base64::Engine;
    let logo = work.path().join("logo.png");
    let png = base64::engine::general_purpose::STANDARD
        .decode(LOGO_PNG)
        .expect("png");
    std::fs::write(&logo, png).expect("logo");
    let dkim_key = work.path().join("clinic.p1.key");
    let mut opts = GwOpts::spool();
    opts.delivery = Some(format!(
        "mode = \"mx\"\ntls_level = \"verify\"\nextra_ca_file = \"{ca}\"\nconnect_timeout = \"5s\"\n\
         on_tls_failure = \"portal\"\nportal_after = \"0s\"\n\
         [delivery.domains.\"plain.test\"]\nroute = \"127.0.0.1:{p}\"\n\
         [delivery.domains.\"badcert.test\"]\nroute = \"127.0.0.1:{b}\"\n\
         [delivery.domains.\"clinic.test\"]\nroute = \"127.0.0.1:{cl}\"\n",
        ca = mx_pki.ca.display(),
        p = plain.port,
        b = badcert.port,
        cl = clinic.port,
    ));
    opts.server_extra += &format!(
        "\n[portal]\nlisten = \"127.0.0.1:{portal_port}\"\npublic_url = \"https://127.0.0.1:{portal_port}\"\n\
         organization = \"Test Clinic\"\nlink_ttl = \"{link_ttl}\"\nmax_code_attempts = 5\n\
         from = \"secure@clinic.test\"\nlogo_file = \"{logo}\"\n\
         {template_line}\n[[dkim]]\ndomain = \"clinic.test\"\nselector = \"p1\"\nkey_file = \"{key}\"\n\
         \n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
         \n[[webhook]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nsecret_file = \"{}\"\n",
        secret.display(),
        logo = logo.display(),
        key = dkim_key.display(),
    );
    opts.policy = policy.map(str::to_string);
    let mut gw = Gateway::configure(opts);
    let out = gw.cli_ok(&[
        "dkim",
        "generate",
        "clinic.test",
        "--selector",
        "p1",
        "--algorithm",
        "ed25519",
        "--key-file",
        &dkim_key.display().to_string(),
    ]);
    let (name, record) = out.trim().split_once(" IN TXT ").expect("record");
    let record: String = record.split('"').skip(1).step_by(2).collect();
    let dkim = (name.trim_end_matches('.').to_string(), record);
    gw.launch();
    Some(Lab {
        gw,
        hooks,
        work,
        plain,
        badcert,
        clinic,
        portal_port,
        api_port,
        dkim,
    })
}

/// Submit `eml` over implicit TLS with Python's smtplib; the queued message ID.
fn submit(gw: &Gateway, dir: &Path, to: &[&str]) -> String {
    let f = dir.join("submit.eml");
    std::fs::write(&f, eml(to)).expect("write eml");
    let arg = serde_json::json!({
        "port": gw.port("smtps"), "mode": "implicit", "cafile": gw.pki.ca,
        "servername": "localhost", "from": "dr@clinic.test", "to": to, "msg_file": f,
    });
    let out = Command::new(PYTHON)
        .arg(peers_dir().join("smtplib_send.py"))
        .arg(arg.to_string())
        .output()
        .expect("smtplib_send.py");
    let v: Value = serde_json::from_slice(&out.stdout).expect("smtplib_send JSON");
    let text = v["data"][1].as_str().unwrap_or("");
    assert_eq!(v["data"][0], 250, "{v}");
    text.split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("queued as ID")
        .to_string()
}

fn audit_kinds(gw: &Gateway) -> Vec<Value> {
    gw.cli_ok(&["audit", "export", "--format", "jsonl"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn unreachable_recipients_get_a_notice_and_pick_up_over_https() {
    let Some(lab) = lab("30d", None, None) else {
        return;
    };
    let gw = &lab.gw;
    let id = submit(gw, lab.work.path(), &["pat@plain.test", "kim@badcert.test"]);

    // Only the PHI-free notification reaches each MTA: no STARTTLS, so in plaintext;
    // a bad certificate, so over unverified TLS.
    let (n1, env1) = lab.plain.wait(1);
    let (n2, env2) = lab.badcert.wait(1);
    assert_eq!(env1["tls"], false, "{env1}");
    assert_eq!(env2["tls"], true, "{env2}");
    for n in [&n1, &n2] {
        assert_no_canary("a notification", n);
        assert!(!text_of(n).contains("labs.txt"));
        assert_eq!(subject_of(n), "Secure message from Test Clinic");
    }
    // The notice is DKIM-signed for the portal's From domain (dkimpy verifies it).
    let signed = lab.work.path().join("notice.eml");
    std::fs::write(&signed, &n1).expect("notice");
    let v = run_python(
        &peers_dir().join("dkim_verify.py"),
        &json!({"messages": [signed], "records": {lab.dkim.0.clone(): lab.dkim.1.clone()}}),
    );
    assert_eq!(
        (v[0]["ok"].clone(), v[0]["d"].clone()),
        (json!(true), json!("clinic.test")),
        "{v}"
    );
    let link = link_of(&n1);
    let base = format!("https://127.0.0.1:{}", lab.portal_port);
    assert!(link.starts_with(&format!("{base}/m/")), "{link}");
    assert!(
        !link.contains("pat"),
        "the link names the recipient: {link}"
    );
    let token = link.rsplit('/').next().unwrap_or("");
    assert!(token.len() >= 22, "token too short for 128 bits: {token}");

    let pat = Browser::new(lab.work.path(), &gw.pki.ca, "pat");
    let landing = pat.go(&link, None);
    assert_eq!(landing.status, 200, "{}", landing.text());
    // The organisation's logo from config, on the page and served as it was given.
    use base64::Engine;
    assert!(landing
        .text()
        .contains("<img src=\"/static/logo\" alt=\"Test Clinic logo\""));
    let logo = pat.go(&format!("{base}/static/logo"), None);
    assert_eq!(logo.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(
        logo.body,
        base64::engine::general_purpose::STANDARD
            .decode(LOGO_PNG)
            .expect("png")
    );
    assert_no_canary("the landing page", &landing.body);
    assert!(!landing.text().contains("pat@plain.test"));
    let csp = landing
        .header("content-security-policy")
        .unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // Without a session, the message and its attachments are not shown.
    let r = pat.go(&format!("{link}/view"), None);
    assert_eq!(r.status, 401);
    assert_no_canary("the view page without a session", &r.body);
    assert_eq!(pat.go(&format!("{link}/attachments/0"), None).status, 401);

    // A forged form (no CSRF value) is refused; the real one mails a code.
    assert_eq!(pat.go(&format!("{link}/code"), Some("csrf=00")).status, 403);
    let csrf = landing.csrf();
    let sent = pat.go(&format!("{link}/code"), Some(&format!("csrf={csrf}")));
    assert_eq!(sent.status, 200, "{}", sent.text());
    let (code_mail, _) = lab.plain.wait(2);
    assert_no_canary("the code mail", &code_mail);
    let code = code_of(&code_mail);
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );

    let v = pat.go(
        &format!("{link}/verify"),
        Some(&format!("csrf={csrf}&code={code}")),
    );
    assert_eq!(v.status, 303, "{}", v.text());
    assert_eq!(
        v.header("location").as_deref(),
        Some(format!("/m/{token}/view").as_str())
    );
    let cookie = v.header("set-cookie").unwrap_or_default();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // The code is single-use.
    let again = Browser::new(lab.work.path(), &gw.pki.ca, "other");
    let replay = again.go(
        &format!("{link}/verify"),
        Some(&format!("csrf={csrf}&code={code}")),
    );
    assert_eq!(replay.status, 400, "{}", replay.text());

    let view = pat.go(&format!("{link}/view"), None);
    assert_eq!(view.status, 200);
    let page = view.text();
    assert!(page.contains(CANARY), "the message is not shown: {page}");
    assert!(
        !page.contains("<script") && !page.contains("evil.example"),
        "{page}"
    );
    assert!(page.contains("labs.txt"));
    let att = pat.go(&format!("{link}/attachments/0"), None);
    assert_eq!(att.status, 200);
    assert_eq!(att.body, ATTACHMENT);
    assert!(att
        .header("content-disposition")
        .unwrap_or_default()
        .contains("attachment"));
    assert_eq!(pat.go(&format!("{link}/attachments/7"), None).status, 404);

    // A secure reply goes back to the sender over verified TLS.
    let csrf2 = view.csrf();
    let r = pat.go(
        &format!("{link}/reply"),
        Some(&format!("csrf={csrf2}&text=Thanks+doctor+{CANARY}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (reply, renv) = lab.clinic.wait(1);
    assert_eq!(renv["tls"], true);
    assert_eq!(renv["to"], serde_json::json!(["dr@clinic.test"]));
    assert!(text_of(&reply).contains(&format!("Thanks doctor {CANARY}")));
    assert!(subject_of(&reply).starts_with("Re: Lab result"));

    // Five wrong codes lock the other link, even against the right code.
    let kim_link = link_of(&n2);
    let kim = Browser::new(lab.work.path(), &gw.pki.ca, "kim");
    let kcsrf = kim.go(&kim_link, None).csrf();
    assert_eq!(
        kim.go(&format!("{kim_link}/code"), Some(&format!("csrf={kcsrf}")))
            .status,
        200
    );
    let (kim_code_mail, _) = lab.badcert.wait(2);
    let kim_code = code_of(&kim_code_mail);
    let wrong = if kim_code == "000000" {
        "111111"
    } else {
        "000000"
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = kim.go(
            &format!("{kim_link}/verify"),
            Some(&format!("csrf={kcsrf}&code={wrong}")),
        );
        statuses.push(r.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429]);
    let locked = kim.go(
        &format!("{kim_link}/verify"),
        Some(&format!("csrf={kcsrf}&code={kim_code}")),
    );
    assert_eq!(locked.status, 429, "{}", locked.text());

    // Administration: list, revoke; a revoked link is 410 on every route.
    let list = gw.cli_json(&["portal", "list"]);
    let rows = list.as_array().expect("array");
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows.iter().all(|r| r["message"] == id.as_str()));
    assert_no_canary("portal list", list.to_string().as_bytes());
    let kim_row = rows
        .iter()
        .find(|r| r["rcpt_index"] == 1)
        .expect("kim's row");
    let kim_id = kim_row["id"].as_str().expect("id");
    let pat_row = rows
        .iter()
        .find(|r| r["rcpt_index"] == 0)
        .expect("pat's row");
    assert!(pat_row["picked_up"].is_u64(), "{pat_row}");
    gw.cli_ok(&["portal", "extend", kim_id, "--by", "7d"]);
    let shown = gw.cli_json(&["portal", "show", kim_id]);
    assert_eq!(
        shown["expires_at"].as_u64(),
        kim_row["expires_at"].as_u64().map(|e| e + 7 * 86400)
    );
    // resend: a new notification with the same link.
    gw.cli_ok(&["portal", "resend", kim_id]);
    let (again, _) = lab.badcert.wait(3);
    assert_eq!(link_of(&again), kim_link);
    assert_no_canary("the resent notification", &again);
    gw.cli_ok(&["portal", "revoke", kim_id]);
    for path in ["", "/view", "/attachments/0"] {
        assert_eq!(
            kim.go(&format!("{kim_link}{path}"), None).status,
            410,
            "{path}"
        );
    }
    assert_eq!(
        kim.go(&format!("{kim_link}/code"), Some(&format!("csrf={kcsrf}")))
            .status,
        410
    );
    assert_eq!(
        pat.go(&format!("{base}/m/{}", "A".repeat(43)), None).status,
        404
    );

    // The original message's recipients show what happened to them.
    let shown = gw.cli_json(&["queue", "show", &id]);
    let states: Vec<&str> = shown["summary"]["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(states, ["picked-up", "revoked"], "{shown}");

    // The audit trail has every step, with client facts.
    let trail = audit_kinds(gw);
    let kinds: Vec<&str> = trail.iter().filter_map(|r| r["kind"].as_str()).collect();
    for k in [
        "portal_notified",
        "portal_notice_sent",
        "portal_code_requested",
        "portal_code_failed",
        "portal_verified",
        "portal_viewed",
        "portal_picked_up",
        "portal_downloaded",
        "portal_replied",
        "portal_extended",
        "portal_resent",
        "portal_revoked",
    ] {
        assert!(kinds.contains(&k), "no {k} in the trail: {kinds:?}");
    }
    let sent: Vec<&Value> = trail
        .iter()
        .filter(|r| r["kind"] == "portal_notice_sent")
        .collect();
    let text = serde_json::to_string(&sent).unwrap_or_default();
    assert!(
        text.contains("plaintext-notice") && text.contains("encrypt-only"),
        "{text}"
    );
    assert_no_canary("phigate's log", gw.log().as_bytes());

    // Webhooks tell the sender's side: portal, picked up, revoked; no address, no canary.
    let types = || -> Vec<String> {
        (lab.hooks.lock().expect("lock").iter())
            .filter_map(|p| serde_json::from_slice::<Value>(&p.body).ok())
            .filter_map(|v| v["type"].as_str().map(str::to_string))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = ["message.portal", "message.picked_up", "message.revoked"];
    while !want.iter().all(|w| types().iter().any(|t| t == w)) {
        assert!(Instant::now() < deadline, "webhook events: {:?}", types());
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in lab.hooks.lock().expect("lock").iter() {
        assert_no_canary("a webhook", &p.body);
        assert!(
            !String::from_utf8_lossy(&p.body).contains('@'),
            "address in a webhook"
        );
    }
}

#[test]
fn policy_portal_rule_and_expiry_shred_the_copy() {
    let policy = "[default]\naction = \"accept\"\n\n[[rule]]\nname = \"external-portal\"\naction = \"portal\"\n[rule.match]\nrecipient = [\"*@plain.test\"]\n";
    let Some(mut lab) = lab("3s", Some(policy), None) else {
        return;
    };
    let explain = {
        let f = lab.work.path().join("m.eml");
        std::fs::write(&f, eml(&["pat@plain.test"])).expect("eml");
        lab.gw.cli_ok(&[
            "policy",
            "explain",
            "--from",
            "dr@clinic.test",
            "--to",
            "pat@plain.test",
            f.to_str().unwrap_or(""),
        ])
    };
    assert!(
        explain.contains("goes to the secure portal (rule `external-portal`)"),
        "{explain}"
    );
    assert!(
        explain.contains("delivery fallback: a recipient whose servers"),
        "{explain}"
    );
    // Policy sends pat to the portal although plain.test would take the mail.
    let id = submit(&lab.gw, lab.work.path(), &["pat@plain.test"]);
    let (n, _) = lab.plain.wait(1);
    assert_no_canary("the notification", &n);
    let link = link_of(&n);
    let rows = lab.gw.cli_json(&["portal", "list"]);
    let pid = rows[0]["id"].as_str().expect("id").to_string();
    assert_eq!(rows[0]["reason"], "external-portal");
    // Expiry: the link answers 410 and the portal copy's key and content are gone.
    let b = Browser::new(lab.work.path(), &lab.gw.pki.ca, "b");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = b.go(&link, None);
        if r.status == 410 {
            assert!(r.text().contains("contact the sender"));
            break;
        }
        assert!(Instant::now() < deadline, "link never expired");
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.gw.cli_json(&["portal", "show", &pid])["state"] != "expired" {
        assert!(Instant::now() < deadline, "never swept");
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.gw.stop();
    let ring = phigate::spool::Keyring::load(&lab.gw.key_file).expect("keyring");
    let spool = phigate::spool::Spool::open(&lab.gw.data.join("spool"), ring).expect("spool");
    let portal_id: phigate::types::MessageId = pid.parse().expect("id");
    assert!(
        spool.load(&portal_id).is_err(),
        "the portal copy still opens"
    );
    assert!(
        !spool.has_key(&portal_id).expect("read"),
        "data key still there"
    );
    let original: phigate::types::MessageId = id.parse().expect("id");
    assert!(
        spool.load(&original).is_err(),
        "the original was not shredded"
    );
    let summary = spool.summary(&original).expect("summary");
    assert_eq!(
        summary.recipients[0].state,
        phigate::spool::StateTag::Expired
    );
}

#[test]
fn pages_work_in_a_real_browser_and_hostile_html_runs_nothing() {
    if !browser_available() {
        return;
    }
    let Some(lab) = lab("30d", None, None) else {
        return;
    };
    submit(&lab.gw, lab.work.path(), &["pat@plain.test"]);
    let (n, _) = lab.plain.wait(1);
    let link = link_of(&n);
    let origin = format!("127.0.0.1:{}", lab.portal_port);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screens");
    std::fs::create_dir_all(&shots).expect("screens dir");
    let landing_png = shots.join("landing.png");
    let view_png = shots.join("view.png");

    // First session: the landing page, and "Send me a code".
    let r = browser_run(&json!([
        {"go": link},
        {"screenshot": landing_png.to_string_lossy()},
        {"text": "h1"},
        {"click": "#send-code"},
        {"text": "p.note"},
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r[2]["text"], "You have a secure message", "{r:?}");
    assert!(
        r[4]["text"]
            .as_str()
            .unwrap_or("")
            .contains("A code is on its way"),
        "{r:?}"
    );
    png_check(&landing_png, 1024, 900, 8).unwrap_or_else(|e| panic!("{e}"));
    let code = code_of(&lab.plain.wait(2).0);

    // Second session (a fresh browser, as a recipient who came back): code, message,
    // attachment, reply, with every request the pages made recorded.
    let r = browser_run(&json!([
        {"go": link},                                                  // 0
        {"fill": "#code", "text": code},                               // 1
        {"click": "#verify"},                                          // 2
        {"wait_url": "/view"},                                         // 3
        {"sleep": 0.5},                                                // 4
        {"screenshot": view_png.to_string_lossy()},                    // 5
        {"text": "#body"},                                             // 6
        {"alert": true},                                               // 7
        {"eval": "return typeof window.__pwned"},                      // 8
        {"count": "script, iframe, #body img, style, meta[http-equiv], form[action*=evil]"}, // 9
        {"attr": "#body a", "name": "href"},                           // 10
        {"cookies": true},                                             // 11
        {"attr": "ul.attachments a", "name": "href"},                  // 12
        {"requests": true},                                            // 13
        {"fill": "#text", "text": "Thank you, see you Tuesday"},       // 14
        {"click": "#reply"},                                           // 15
        {"text": "p.note"},                                            // 16
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r[3]["url"].as_str().unwrap_or("").ends_with("/view"),
        "{r:?}"
    );
    assert!(
        r[6]["text"].as_str().unwrap_or("").contains(CANARY),
        "{}",
        r[6]
    );
    assert_eq!(r[7]["open"], false, "a dialog opened: {}", r[7]);
    assert_eq!(
        r[7]["calls"],
        json!([]),
        "a script called a dialog: {}",
        r[7]
    );
    assert_eq!(r[8]["value"], "undefined", "a script ran: {}", r[8]);
    assert_eq!(r[9]["count"], 0, "active elements survived: {}", r[9]);
    // The javascript: link lost its href (ammonia drops disallowed schemes).
    assert!(r[10]["value"].is_null(), "{}", r[10]);
    let cookie = r[11]["cookies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "phigate_portal"))
        .unwrap_or_else(|| panic!("no session cookie: {}", r[11]))
        .clone();
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["secure"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    // The page's CSP forbids fetches from script, so the download link is followed by
    // curl with the browser's own session cookie.
    let href = r[12]["value"].as_str().unwrap_or("").to_string();
    assert!(href.ends_with("/attachments/0"), "{href}");
    let jar = lab.work.path().join("from-browser.jar");
    std::fs::write(
        &jar,
        format!(
            "127.0.0.1\tFALSE\t{}\tTRUE\t0\tphigate_portal\t{}\n",
            cookie["path"].as_str().unwrap_or("/"),
            cookie["value"].as_str().unwrap_or("")
        ),
    )
    .expect("jar");
    let b = Browser {
        ca: lab.gw.pki.ca.clone(),
        jar,
        work: lab.work.path().to_path_buf(),
    };
    let att = b.go(&format!("https://{origin}{href}"), None);
    assert_eq!(att.status, 200);
    assert_eq!(att.body, ATTACHMENT);
    // Nothing but the portal itself was contacted: no remote image, style or frame.
    assert_eq!(r[13]["contacted"], json!([origin]), "{}", r[13]);
    assert!(
        r[16]["text"]
            .as_str()
            .unwrap_or("")
            .contains("reply was sent"),
        "{r:?}"
    );
    png_check(&view_png, 1024, 900, 8).unwrap_or_else(|e| panic!("{e}"));
    let (reply, _) = lab.clinic.wait(1);
    assert!(text_of(&reply).contains("see you Tuesday"));
}

#[test]
fn a_notification_with_dlp_findings_is_never_sent() {
    // An admin template that would put something SSN-shaped into every notification.
    let template = "{{ organization }}: open {{ link }} (reference 536-22-8901)\n";
    let Some(lab) = lab("30d", None, Some(template)) else {
        return;
    };
    let id = submit(&lab.gw, lab.work.path(), &["pat@plain.test"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.gw.log().contains("portal notification refused by DLP") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            lab.gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !lab.plain.dir.join("1.json").exists(),
        "a notification went out"
    );
    let shown = lab.gw.cli_json(&["queue", "show", &id]);
    assert_eq!(
        shown["summary"]["recipients"][0]["state"], "deferred",
        "{shown}"
    );
    assert_eq!(lab.gw.cli_json(&["portal", "list"]), json!([]));
    let log = lab.gw.log();
    assert!(log.contains("alert=\"portal_notice_refused\""), "{log}");
    assert!(!log.contains("8901"), "the finding's value is logged");
}

/// API `"portal": "never"`: a recipient whose MX lacks STARTTLS is deferred with a TLS
/// reason and gets nothing, while the same request with `"auto"` falls back to the
/// portal (a notification, a portal row).
#[test]
fn api_portal_never_defers_instead_of_falling_back() {
    let Some(lab) = lab("1h", None, None) else {
        return;
    };
    let gw = &lab.gw;
    let key = gw
        .cli_ok(&["api-key", "create", "app", "--scope", "send,read"])
        .trim()
        .to_string();
    let send = |to: &str, portal: &str| {
        let body = json!({
            "from": "dr@clinic.test", "to": [to], "subject": "Lab result",
            "text": format!("Result {CANARY}"), "portal": portal,
        });
        let out = common::run_python(
            &peers_dir().join("api_client.py"),
            &json!({"port": lab.api_port, "host": common::HOSTNAME, "ca": gw.pki.ca,
                    "requests": [{"method": "POST", "path": "/v1/messages", "key": key, "body": body}]}),
        );
        assert_eq!(out[0]["status"], 202, "{out}");
        out[0]["body"]["id"].as_str().expect("id").to_string()
    };
    let never = send("pat@plain.test", "never");
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let shown = gw.cli_json(&["queue", "show", &never]);
        if shown["summary"]["recipients"][0]["state"] == "deferred" {
            break shown["recipients"][0].to_string();
        }
        assert!(Instant::now() < deadline, "never deferred: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(reason.contains("4.7."), "deferred for TLS: {reason}");
    let auto = send("kim@plain.test", "auto");
    let (notice, _) = lab.plain.wait(1);
    assert_no_canary("the notification", &notice);
    let rows = gw.cli_json(&["portal", "list"]);
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let shown = gw.cli_json(&["queue", "show", &auto]);
    assert_eq!(
        shown["summary"]["recipients"][0]["state"], "portal",
        "{shown}"
    );
    // A retry of the "never" message still does not reach the portal.
    gw.cli_ok(&["queue", "retry", &never]);
    std::thread::sleep(Duration::from_secs(2));
    let shown = gw.cli_json(&["queue", "show", &never]);
    assert_eq!(
        shown["summary"]["recipients"][0]["state"], "deferred",
        "{shown}"
    );
    assert!(
        !lab.plain.dir.join("2.json").exists(),
        "a second notification went out"
    );
    assert_eq!(
        gw.cli_json(&["portal", "list"]).as_array().map(Vec::len),
        Some(1)
    );
}

/// The portal's certificate (here the listeners' `[tls]` one) is reloaded on SIGHUP.
#[test]
fn sighup_reloads_the_portal_certificate() {
    if !require_tool("openssl") {
        return;
    }
    let Some(lab) = lab("30d", None, None) else {
        return;
    };
    let gw = &lab.gw;
    let old = served_fingerprint(lab.portal_port, &gw.pki.ca);
    assert_eq!(old, pem_fingerprint(&gw.pki.cert));
    let (cert, key) = gw.pki.new_server_cert();
    std::fs::write(&gw.pki.key, key).expect("write key");
    std::fs::write(&gw.pki.cert, cert).expect("write cert");
    let new = pem_fingerprint(&gw.pki.cert);
    assert_ne!(new, old);
    gw.cli_ok(&["reload"]);
    assert_eq!(served_fingerprint(lab.portal_port, &gw.pki.ca), new);
}
