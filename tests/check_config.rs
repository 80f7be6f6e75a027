//! `phigate check-config`: exit 0 with a one-line summary for a good file, non-zero
//! naming the file and the key for each kind of mistake.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn good_config(dir: &Path, pki: &Pki) -> String {
    format!(
        r#"[server]
hostname = "{HOSTNAME}"
data_dir = "{data}"

[[listener]]
name = "smtps"
addr = "127.0.0.1:4650"
tls = "implicit"
auth = ["password", "ip"]

[tls]
cert = "{cert}"
key = "{key}"

[auth]
users_file = "{users}"
allow_networks = ["10.0.0.0/8"]

[delivery]
mode = "sandbox"

[spool]
key_file = "{keys}"
generate_key = true
"#,
        data = dir.join("data").display(),
        cert = pki.cert.display(),
        key = pki.key.display(),
        users = dir.join("users").display(),
        keys = dir.join("master.keys").display(),
    )
}

/// Write `text` as a config file and run check-config on it: (exit ok, stdout, stderr).
fn check(dir: &Path, name: &str, text: &str) -> (bool, String, String, PathBuf) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        path,
    )
}

fn assert_refused(dir: &Path, name: &str, text: &str, key: &str, what: &str) {
    let (ok, _, err, path) = check(dir, name, text);
    assert!(!ok, "{name}: accepted");
    assert!(
        err.contains(&path.display().to_string()),
        "{name}: file not named: {err}"
    );
    assert!(err.contains(key), "{name}: key `{key}` not named: {err}");
    assert!(err.contains(what), "{name}: `{what}` not said: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{name}: not one line: {err}");
}

#[test]
fn good_config_gives_a_one_line_summary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let (ok, out, err, path) = check(tmp.path(), "good.toml", &good_config(tmp.path(), &pki));
    assert!(ok, "{err}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(out.starts_with(&format!("{}: ok", path.display())), "{out}");
    assert!(out.contains("smtps 127.0.0.1:4650 implicit-tls"), "{out}");
}

#[test]
fn each_mistake_is_named_with_file_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let pki = Pki::new(dir);
    let good = good_config(dir, &pki);

    let unknown = good.replace("[delivery]\n", "[delivery]\nsmarthost = \"x\"\n");
    assert_refused(dir, "unknown.toml", &unknown, "delivery", "smarthost");

    let missing = dir.join("nope/cert.pem");
    let text = good.replace(
        &pki.cert.display().to_string(),
        &missing.display().to_string(),
    );
    assert_refused(
        dir,
        "missing-cert.toml",
        &text,
        "tls.cert",
        &missing.display().to_string(),
    );

    // Tests run as root, so chmod 000 would not stop a read: use a directory...
    let keydir = dir.join("keydir");
    std::fs::create_dir_all(&keydir).expect("mkdir");
    let text = good.replace(
        &pki.key.display().to_string(),
        &keydir.display().to_string(),
    );
    assert_refused(
        dir,
        "key-dir.toml",
        &text,
        "tls.key",
        &keydir.display().to_string(),
    );
    // ...and a file that holds no PEM key (a certificate).
    let text = good.replace(
        &pki.key.display().to_string(),
        &pki.ca.display().to_string(),
    );
    assert_refused(
        dir,
        "key-not-pem.toml",
        &text,
        "tls.key",
        "no PEM PRIVATE KEY",
    );

    let text = good.replace("10.0.0.0/8", "10.0.0.0/33");
    assert_refused(dir, "cidr.toml", &text, "auth.allow_networks[0]", "CIDR");

    let text = good.replace("tls = \"implicit\"\n", "");
    assert_refused(dir, "no-tls.toml", &text, "listener[0]", "tls");

    let text = good.replace("tls = \"implicit\"", "tls = \"none\"");
    assert_refused(dir, "plain-tls.toml", &text, "listener[0].tls", "none");

    let text = good.replace("[server]\n", "[server]\nmax_line_length = \"512\"\n");
    assert_refused(
        dir,
        "short-lines.toml",
        &text,
        "server.max_line_length",
        "1000",
    );

    let text = format!("{good}\n[tlsrpt]\nsend_hour = 24\n");
    assert_refused(
        dir,
        "tlsrpt-hour.toml",
        &text,
        "tlsrpt.send_hour",
        "0 to 23",
    );
    let text = format!("{good}\n[tlsrpt]\nfrom = \"not an address\"\n");
    assert_refused(
        dir,
        "tlsrpt-from.toml",
        &text,
        "tlsrpt.from",
        "plain address",
    );
    let text = format!("{good}\n[tlsrpt]\nenabled = true\n");
    assert_refused(
        dir,
        "tlsrpt-mode.toml",
        &text,
        "tlsrpt.enabled",
        "delivery.mode",
    );
    let text = format!("{good}\n[tlsrpt]\nsend_hours = 2\n");
    assert_refused(dir, "tlsrpt-unknown.toml", &text, "tlsrpt", "send_hours");
}

/// `[dlp.limits]` in the policy file is validated: the error names the policy file,
/// the line and the key.
#[test]
fn bad_extraction_limit_names_policy_file_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[dlp]\nmode = \"enforce\"\n\n[dlp.limits]\nmax_entries = 100\nmax_depth = 99\n\n[default]\naction = \"accept\"\n",
    )
    .expect("write policy");
    let text = format!(
        "{}\n[policy]\nfile = \"{}\"\n",
        good_config(tmp.path(), &pki),
        policy.display()
    );
    let (ok, _, err, _) = check(tmp.path(), "limits.toml", &text);
    assert!(!ok, "accepted");
    assert!(err.contains(&policy.display().to_string()), "{err}");
    assert!(err.contains("max_depth") && err.contains("0..=16"), "{err}");
    assert!(err.contains(":6"), "line not named: {err}");
}

/// `[portal]` and its uses: a bad public URL, a fallback or a policy rule without the
/// section, a broken notification template; each named with its file and key.
#[test]
fn portal_mistakes_are_named_with_file_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let pki = Pki::new(dir);
    let good = good_config(dir, &pki);
    let portal =
        "\n[portal]\nlisten = \"127.0.0.1:8444\"\npublic_url = \"https://secure.clinic.test\"\n";
    let (ok, out, err, _) = check(dir, "portal.toml", &format!("{good}{portal}"));
    assert!(ok, "{err}");
    assert!(out.contains("portal 127.0.0.1:8444 https"), "{out}");

    let text = format!(
        "{good}{}",
        portal.replace("https://secure.clinic.test", "http://x.test/path")
    );
    assert_refused(
        dir,
        "portal-url.toml",
        &text,
        "portal.public_url",
        "https://",
    );

    let text = good.replace("[delivery]\n", "[delivery]\non_tls_failure = \"portal\"\n");
    assert_refused(
        dir,
        "fallback.toml",
        &text,
        "delivery.on_tls_failure",
        "[portal]",
    );

    let template = dir.join("notification.txt");
    std::fs::write(&template, "{{ link }\n").expect("template");
    let text = format!(
        "{good}{portal}notification_template = \"{}\"\n",
        template.display()
    );
    assert_refused(
        dir,
        "template.toml",
        &text,
        "portal.notification_template",
        "notification",
    );

    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"webmail\"\naction = \"portal\"\n[rule.match]\nrecipient = [\"*@gmail.com\"]\n",
    )
    .expect("policy");
    let text = format!("{good}\n[policy]\nfile = \"{}\"\n", policy.display());
    let (ok, _, err, _) = check(dir, "policy-portal.toml", &text);
    assert!(!ok, "a portal rule without [portal] was accepted");
    assert!(
        err.contains(&policy.display().to_string())
            && err.contains("rule `webmail`")
            && err.contains("[portal]"),
        "{err}"
    );
}
