//! Open-relay attempts through the real listener: without authorisation nothing is
//! accepted, whatever the sender claims to be; with it, addresses that hide routing in
//! the local part or as a source route are refused rather than relayed.

mod common;
use common::*;

#[test]
fn unauthorised_clients_cannot_relay_even_with_a_local_looking_sender() {
    if !require_tool(PYTHON) {
        return;
    }
    // Password-only listener: the loopback network is not allowed to relay here.
    let gw = Gateway::start(GwOpts {
        listeners: vec![listener("smtps", "implicit", &["password"])],
        ..GwOpts::default()
    });
    for sender in ["postmaster@phigate.test", "", "ehr@clinic.test"] {
        let t = py(gw.peer(
            "smtps",
            vec![
                send("EHLO attacker.example\r\n"),
                send(&format!("MAIL FROM:<{sender}>\r\n")),
                send("RCPT TO:<victim@example.org>\r\n"),
                send("QUIT\r\n"),
            ],
        ));
        assert_eq!(t.line(1), "530 5.7.0 Authentication required", "{sender}");
        assert!(t.line(2).starts_with("503 5.5.1"), "{}", t.line(2));
    }
    assert!(gw.messages().is_empty());
}

#[test]
fn routing_tricks_in_recipient_addresses_are_refused() {
    if !require_tool(PYTHON) {
        return;
    }
    let gw = Gateway::start(GwOpts::default());
    let tricks = [
        "<@relay.example:victim@example.org>",
        "<@a.example,@b.example:victim@example.org>",
        "<victim%example.org@relay.example>",
        "<host!victim@example.org>",
        "<victim@example.org@relay.example>",
        "<\"victim@example.org\"@relay.example>@x",
        "<postmaster>",
        "<victim@[999.1.1.1]>",
    ];
    let mut steps = vec![
        send("EHLO ehr.clinic.test\r\n"),
        send("MAIL FROM:<sender@clinic.test>\r\n"),
    ];
    for t in tricks {
        steps.push(send(&format!("RCPT TO:{t}\r\n")));
    }
    steps.push(send("RCPT TO:<patient@example.net>\r\n"));
    steps.push(send("QUIT\r\n"));
    let t = py(gw.peer("smtps", steps));
    for (i, trick) in tricks.iter().enumerate() {
        let reply = t.line(2 + i);
        assert!(
            reply.starts_with("553 5.1.3") || reply.starts_with("501 5.5.4"),
            "{trick} was not refused: {reply}"
        );
    }
    // The session stayed usable and a plain recipient is still accepted.
    assert_eq!(t.line(2 + tricks.len()), "250 2.1.5 Ok");
    assert!(gw.messages().is_empty());
}
