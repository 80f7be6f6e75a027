//! A real legacy upstream: a private Postfix instance with
//! `relayhost = [127.0.0.1]:PORT` and `smtp_tls_security_level = secure` (verified
//! against the test CA) relays a message through phigate into the sandbox, once over
//! implicit TLS (`smtp_tls_wrappermode = yes`) and once with STARTTLS. And long lines:
//! an upstream Postfix that passes them unbroken (as legacy senders write them) relays
//! through phigate to a second Postfix, the receiving MTA, which stores a Maildir.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A loopback-only Postfix with a private config dir, stopped on drop.
struct Postfix {
    lab: PathBuf,
    conf: PathBuf,
}

impl Postfix {
    fn start(lab: &Path, gw_port: u16, wrapper: bool, ca: &Path) -> Postfix {
        Self::start_with(lab, gw_port, wrapper, ca, "")
    }

    /// The upstream, `extra` appended to main.cf.
    fn start_with(lab: &Path, gw_port: u16, wrapper: bool, ca: &Path, extra: &str) -> Postfix {
        let main = format!(
            "relayhost = [127.0.0.1]:{gw_port}
smtp_tls_wrappermode = {wrap}
smtp_tls_security_level = secure
smtp_tls_CAfile = {ca}
smtp_tls_secure_cert_match = {HOSTNAME}
smtp_tls_loglevel = 1
{extra}",
            wrap = if wrapper { "yes" } else { "no" },
            ca = ca.display(),
        );
        Self::launch(lab, "upstream", &main, None)
    }

    /// A receiving MTA: smtpd with STARTTLS on 127.0.0.1:`port`, mail for `domain`
    /// stored in the Maildir `<lab>/mail/box/`.
    fn receiver(lab: &Path, port: u16, domain: &str, cert: &Path, key: &Path) -> Postfix {
        std::fs::create_dir_all(lab.join("mail")).expect("mail dir");
        let main = format!(
            "virtual_mailbox_domains = {domain}
virtual_mailbox_base = {lab}/mail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_received_header = yes
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
",
            lab = lab.display(),
            uid = id("-u"),
            gid = id("-g"),
            cert = cert.display(),
            key = key.display(),
        );
        Self::launch(lab, "receiver", &main, Some(port))
    }

    fn launch(lab: &Path, name: &str, extra_main: &str, smtpd: Option<u16>) -> Postfix {
        let conf = lab.join("conf");
        for d in ["conf", "queue", "data"] {
            std::fs::create_dir_all(lab.join(d)).expect("lab dir");
        }
        let sh = |cmd: &str| {
            let st = Command::new("sh")
                .args(["-c", cmd])
                .status()
                .expect("run sh");
            assert!(st.success(), "failed: {cmd}");
        };
        // Postfix daemons run as `postfix` and must reach the queue through the path.
        let mut p = lab.to_path_buf();
        while p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
            sh(&format!("chmod 755 '{}'", p.display()));
            p.pop();
        }
        sh(&format!("chown postfix '{}'", lab.join("data").display()));
        if lab.join("mail").exists() {
            sh(&format!(
                "chown postfix:postfix '{}'",
                lab.join("mail").display()
            ));
        }
        let master = std::fs::read_to_string("/usr/share/postfix/master.cf.dist")
            .expect("postfix master.cf.dist");
        // An smtpd listener only for a receiver (on its own port), and no chroot anywhere.
        let master: String = master
            .lines()
            .map(|l| match (l.starts_with("smtp      inet"), smtpd) {
                (true, Some(port)) => format!("127.0.0.1:{port} inet n - n - - smtpd"),
                (true, None) => String::new(),
                _ => l.to_string(),
            })
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let service = f.len() >= 8
                    && !l.starts_with(['#', ' ', '\t'])
                    && ["unix", "inet", "fifo", "pass", "unix-dgram"].contains(&f[1]);
                if service && f[4] == "y" {
                    let mut f = f.clone();
                    f[4] = "n";
                    f.join(" ")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(conf.join("master.cf"), master + "\n").expect("master.cf");
        let main = format!(
            "compatibility_level = 3.6
queue_directory = {lab}/queue
data_directory = {lab}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {name}.lab.test
mydomain = lab.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file_prefixes = /var, /dev/stdout, {lab}
maillog_file = {lab}/maillog
alias_maps =
alias_database =
smtputf8_enable = no
{extra_main}",
            lab = lab.display(),
        );
        std::fs::write(conf.join("main.cf"), main).expect("main.cf");
        let pf = Postfix {
            lab: lab.to_path_buf(),
            conf,
        };
        pf.postfix("check");
        pf.postfix("start");
        pf
    }

    fn postfix(&self, action: &str) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg(action)
            .output()
            .expect("run postfix");
        assert!(
            out.status.success(),
            "postfix {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn send(&self, rcpt: &str, message: &str) {
        let mut child = Command::new("/usr/sbin/sendmail")
            .arg("-C")
            .arg(&self.conf)
            .args(["-f", "client@upstream.invalid", rcpt])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run sendmail");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(message.as_bytes())
            .expect("write message");
        assert!(child.wait().expect("sendmail").success(), "sendmail failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.lab.join("maillog")).unwrap_or_default()
    }
}

/// `id -u postfix` / `id -g postfix`.
fn id(flag: &str) -> String {
    let out = Command::new("id")
        .args([flag, "postfix"])
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
        if std::thread::panicking() {
            eprintln!("--- postfix maillog ---\n{}", self.log());
        }
    }
}

fn relay_through_postfix(listener: &str, wrapper: bool) {
    if !require_tool("postfix") || !require_tool("/usr/sbin/sendmail") {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let lab = gw.tmp.path().join("postfix-lab");
    let pf = Postfix::start(&lab, gw.port(listener), wrapper, &gw.pki.ca);
    let marker = format!("relay-{listener}-{}", std::process::id());
    pf.send(
        "patient@example.net",
        &format!(
            "From: <client@upstream.invalid>\nTo: <patient@example.net>\nSubject: {marker}\n\nhello from a legacy EHR\n"
        ),
    );
    let msgs = gw.wait_messages(1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "nothing relayed; postfix log:\n{}", pf.log());
    let (_, eml, env) = &msgs[0];
    let text = String::from_utf8_lossy(eml);
    assert!(text.contains(&format!("Subject: {marker}\r\n")), "{text}");
    assert!(
        text.contains("\r\n\r\nhello from a legacy EHR\r\n"),
        "{text}"
    );
    assert!(crlf_only(eml));
    assert_eq!(env["mail_from"], "client@upstream.invalid");
    assert_eq!(env["recipients"][0]["address"], "patient@example.net");
    assert_eq!(env["listener"], listener);
    assert_eq!(env["helo"], "upstream.lab.test");
    assert_eq!(env["auth"]["method"], "ip");
    let received = split_received(eml).0;
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(received.contains("(using TLSv1."), "{received}");
    // Postfix verified phigate's certificate, and counts the delivery as sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pf.log().contains("status=sent") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = pf.log();
    assert!(
        log.contains("Verified TLS connection established to 127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("status=sent"), "{log}");
    assert!(log.contains("queued as"), "{log}");
}

#[test]
fn postfix_relays_over_implicit_tls() {
    relay_through_postfix("smtps", true);
}

#[test]
fn postfix_relays_over_starttls() {
    relay_through_postfix("submission", false);
}

/// What every text and attachment part of `eml` decodes to (mail-parser).
fn decoded_parts(eml: &[u8]) -> Vec<Vec<u8>> {
    let m = mail_parser::MessageParser::default()
        .parse(eml)
        .expect("MIME message");
    m.parts
        .iter()
        .filter_map(|p| match &p.body {
            mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => {
                Some(t.as_bytes().to_vec())
            }
            mail_parser::PartType::Binary(b) | mail_parser::PartType::InlineBinary(b) => {
                Some(b.to_vec())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn long_lines_from_a_legacy_sender_arrive_intact_at_a_receiving_postfix() {
    if !require_tool("postfix") || !require_tool("/usr/sbin/sendmail") {
        return;
    }
    let rx_port = free_port();
    let mut gw = Gateway::configure(GwOpts {
        delivery: Some(format!(
            "mode = \"mx\"\ntls_level = \"encrypt\"\nconnect_timeout = \"5s\"\n\
             [delivery.domains.\"inbox.test\"]\nroute = \"127.0.0.1:{rx_port}\"\ntls_level = \"encrypt\"\n"
        )),
        ..GwOpts::default()
    });
    gw.launch();
    let rx_lab = gw.tmp.path().join("postfix-rx");
    std::fs::create_dir_all(&rx_lab).expect("lab");
    let (cert, key) = gw.pki.new_server_cert();
    let (cert_path, key_path) = (rx_lab.join("mx.pem"), rx_lab.join("mx.key"));
    std::fs::write(&cert_path, cert).expect("cert");
    std::fs::write(&key_path, key).expect("key");
    let rx = Postfix::receiver(&rx_lab, rx_port, "inbox.test", &cert_path, &key_path);
    // The upstream passes long lines unbroken, as legacy senders write them.
    let up = Postfix::start_with(
        &gw.tmp.path().join("postfix-up"),
        gw.port("smtps"),
        true,
        &gw.pki.ca,
        "smtp_line_length_limit = 0\n",
    );
    let html = format!(
        "<html><body><table>{}</table></body></html>",
        "<tr><td>lab value 4.2</td></tr>".repeat(700)
    );
    assert!(html.len() > 20_000);
    let csv_line = (0..2000)
        .map(|i| format!("{i}"))
        .collect::<Vec<_>>()
        .join(";");
    let csv = format!("id;values\n{csv_line}\n");
    let message = format!(
        "From: <client@upstream.invalid>\nTo: <patient@inbox.test>\nSubject: long lines\n\
         MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"LL\"\n\n--LL\n\
         Content-Type: text/html; charset=us-ascii\n\n{html}\n--LL\n\
         Content-Type: text/csv; charset=us-ascii\nContent-Disposition: attachment; filename=\"results.csv\"\n\n\
         {csv}\n--LL--\n"
    );
    up.send("patient@inbox.test", &message);
    let boxdir = rx_lab.join("mail/box/new");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let eml = loop {
        let found = std::fs::read_dir(&boxdir)
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok()))
            .map(|e| std::fs::read(e.path()).expect("mail"));
        if let Some(m) = found {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing delivered\nupstream:\n{}\nreceiver:\n{}\nphigate:\n{}",
            up.log(),
            rx.log(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let eml = String::from_utf8_lossy(&eml)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    assert!(
        eml.lines().all(|l| l.len() <= 998),
        "every line the receiver got is RFC 5322-conformant"
    );
    assert!(
        eml.contains("Content-Transfer-Encoding: quoted-printable"),
        "{eml}"
    );
    let parts = decoded_parts(eml.as_bytes());
    let want = |s: &str| s.replace('\n', "\r\n").into_bytes();
    assert!(
        parts
            .iter()
            .any(|p| p.trim_ascii_end() == want(&html).trim_ascii_end()),
        "the HTML decodes byte for byte"
    );
    assert!(
        parts
            .iter()
            .any(|p| p.trim_ascii_end() == want(&csv).trim_ascii_end()),
        "the CSV decodes byte for byte"
    );
    gw.stop();
}
