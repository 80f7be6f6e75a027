//! A real legacy upstream: a private Postfix instance with
//! `relayhost = [127.0.0.1]:PORT` and `smtp_tls_security_level = secure` (verified
//! against the test CA) relays a message through phigate into the sandbox, once over
//! implicit TLS (`smtp_tls_wrappermode = yes`) and once with STARTTLS.

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
        let master = std::fs::read_to_string("/usr/share/postfix/master.cf.dist")
            .expect("postfix master.cf.dist");
        // No smtpd listener (nothing inbound is needed), and no chroot anywhere.
        let master: String = master
            .lines()
            .filter(|l| !l.starts_with("smtp      inet"))
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
myhostname = upstream.lab.test
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
relayhost = [127.0.0.1]:{gw_port}
smtp_tls_wrappermode = {wrap}
smtp_tls_security_level = secure
smtp_tls_CAfile = {ca}
smtp_tls_secure_cert_match = {HOSTNAME}
smtp_tls_loglevel = 1
",
            lab = lab.display(),
            wrap = if wrapper { "yes" } else { "no" },
            ca = ca.display(),
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
