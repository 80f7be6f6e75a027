//! SIGHUP (and `phigate reload`) reload of the whole configuration: a good config takes effect (a changed
//! `auth.allow_networks`), a broken one is refused with the reason logged while the
//! process keeps running on the previous configuration.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// The reply to an unauthenticated MAIL FROM from 127.0.0.1.
fn mail_from_loopback(gw: &Gateway) -> String {
    let t = py(gw.peer(
        "smtps",
        vec![
            send("EHLO ehr.clinic.test\r\n"),
            send("MAIL FROM:<sender@clinic.test>\r\n"),
            send("QUIT\r\n"),
        ],
    ));
    t.line(1).to_string()
}

fn wait_log(gw: &Gateway, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_broken_one() {
    if !require_tool(PYTHON) {
        return;
    }
    let mut gw = Gateway::start(GwOpts {
        control_socket: true,
        ..GwOpts::default()
    });
    assert_eq!(mail_from_loopback(&gw), "250 2.1.0 Ok");
    let original = std::fs::read_to_string(&gw.config).expect("config");
    let allow = "allow_networks = [\"127.0.0.1/32\"]";
    assert!(original.contains(allow), "{original}");

    // Good config: loopback no longer relays without a password.
    let narrowed = original.replace(allow, "allow_networks = [\"10.99.0.0/16\"]");
    std::fs::write(&gw.config, &narrowed).expect("write config");
    gw.signal("HUP");
    wait_log(&gw, "configuration reloaded", 1);
    assert_eq!(mail_from_loopback(&gw), "530 5.7.0 Authentication required");

    // Broken config that would re-open loopback: refused, the reason is logged, and the
    // narrowed configuration stays active.
    let broken = original.replace(allow, &format!("{allow}\nallow_netwrks = []"));
    std::fs::write(&gw.config, &broken).expect("write config");
    gw.signal("HUP");
    wait_log(&gw, "reload refused", 1);
    let log = gw.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .expect("refusal line");
    assert!(
        refusal.contains("allow_netwrks"),
        "reason not logged: {refusal}"
    );
    // Alive now, and (the positive check below) still answering with the narrowed config.
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "process died on a broken config"
    );
    assert_eq!(
        mail_from_loopback(&gw),
        "530 5.7.0 Authentication required",
        "the broken config (or the original) became active"
    );

    // `phigate reload` does the same through the control socket and says how it went:
    // a file that parses but names a missing client CA is refused by the daemon.
    let missing = original.replacen("[tls]", "[tls]\nclient_ca = \"/nonexistent/ca.pem\"", 1);
    assert_ne!(missing, original, "the config has a [tls] table");
    std::fs::write(&gw.config, &missing).expect("write config");
    let out = gw.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused reload fails the command");
    assert!(
        err.contains("reload refused") && err.contains("tls.client_ca"),
        "{err}"
    );

    // Fixing the file and reloading again restores loopback relay.
    std::fs::write(&gw.config, &original).expect("write config");
    let answer = gw.cli_ok(&["reload"]);
    assert!(answer.contains("configuration reloaded"), "{answer}");
    assert_eq!(mail_from_loopback(&gw), "250 2.1.0 Ok");
}
