use super::*;
use crate::audit::{Audit, AuditSettings};
use crate::spool::{RecipientState, Spool};
use crate::types::{now_secs, AuthIdentity, Envelope, Recipient, Status};

fn ring() -> Keyring {
    Keyring::from_keys(vec![MasterKey::from_bytes("k1", 0, [9u8; 32])], "k1").expect("ring")
}

fn open(dir: &std::path::Path) -> (Arc<Spool>, Arc<Audit>, Arc<Events>) {
    let spool = Arc::new(Spool::open(dir, ring()).expect("spool"));
    let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("audit");
    let s2 = spool.clone();
    let events = Events::new(spool.store().clone(), move || s2.keyring());
    audit.set_derive(events.clone());
    (spool, audit, events)
}

fn env(user: &str) -> Envelope {
    Envelope {
        mail_from: "dr.who@clinic.test".into(),
        params: Default::default(),
        recipients: vec![Recipient::new("pat@example.org")],
        helo: "h".into(),
        peer_ip: "127.0.0.1".into(),
        listener: "smtps".into(),
        auth: Some(AuthIdentity::Password(user.into())),
        tls: None,
        received_at: now_secs(),
        tls_floor: None,
        session: String::new(),
    }
}

async fn send(spool: &Spool, audit: &Audit, user: &str) -> MessageId {
    let id = MessageId::new();
    let e = env(user);
    let mut rec = AuditEvent::message_received(id, &e, 10);
    let mut md = Map::new();
    md.insert("order".into(), "A-1".into());
    rec = rec.person("metadata", Value::Object(md));
    let evs = vec![rec, AuditEvent::spooled(id, "k1", false)];
    spool
        .enqueue_with(id, &e, b"x", RecipientState::queued(0), &audit.batch(evs))
        .await
        .expect("enqueue");
    id
}

#[tokio::test]
async fn page_cursor_owner_and_sealing() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit, events) = open(dir.path());
    let rx = events.subscribe();
    let a = send(&spool, &audit, "ehr").await;
    let b = send(&spool, &audit, "lab").await;
    let st = Status::Bounced {
        reason: "no such user pat@example.org".into(),
    };
    let out = AuditEvent::outcome(a, 0, "pat@example.org", &st).expect("outcome");
    audit.record(vec![out]).await.expect("record");
    assert!(rx.has_changed().unwrap_or(false));

    let all = events.page(None, 100, None).expect("page");
    let kinds: Vec<_> = all.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["message.queued", "message.queued", "message.bounced"]
    );
    assert!(all.events.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(all.events[2].recipient(), Some("pat@example.org"));
    assert_eq!(
        all.events[2].metadata.get("order"),
        Some(&Value::from("A-1"))
    );
    assert_eq!(all.events[2].owner.as_deref(), Some("password:ehr"));

    // Paging: one at a time reaches the same events.
    let p1 = events.page(None, 1, None).expect("p1");
    let p2 = events.page(p1.next, 1, None).expect("p2");
    assert_eq!(p2.events[0].message_id, Some(b.to_string()));
    let end = events.page(all.next, 10, None).expect("end");
    assert!(end.events.is_empty());
    assert_eq!(end.next, all.next);

    let ehr = events.page(None, 100, Some("password:ehr")).expect("ehr");
    assert_eq!(ehr.events.len(), 2);
    assert_eq!(events.for_message(&a).expect("for").len(), 2);

    // JSON without addresses carries neither the address nor the reply text.
    let j = serde_json::to_string(&all.events[2]).expect("json");
    assert!(!j.contains("example.org"), "{j}");
    assert!(j.contains("\"id\":\"evt_"));
    let with = all.events[2].to_json(true).to_string();
    assert!(with.contains("pat@example.org"));

    // At rest: sealed.
    spool.store().flush().expect("flush");
    let mut raw = Vec::new();
    spool
        .store()
        .scan(Tree::Events, &[], None, &mut |_, v| {
            raw.extend_from_slice(v);
            true
        })
        .expect("scan");
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("example.org") && !raw.contains("A-1"));
}

#[tokio::test]
async fn restart_keeps_owner_and_retention_purges() {
    let dir = tempfile::tempdir().expect("tmp");
    let id = {
        let (spool, audit, _e) = open(dir.path());
        send(&spool, &audit, "ehr").await
    };
    let (spool, audit, events) = open(dir.path());
    let st = Status::Delivered { reply: "ok".into() };
    let _ = spool;
    let out = AuditEvent::outcome(id, 0, "pat@example.org", &st).expect("outcome");
    let attempt = AuditEvent::new(Kind::DeliveryAttempt)
        .message(id)
        .field("rcpt_index", 0u64)
        .field("mx_host", "mx.example.org")
        .field("tls_version", "TLSv1.3")
        .field("method", "dane")
        .field("peer_cert_sha256", "ab12")
        .person("reply", "250 ok pat@example.org");
    audit.record(vec![attempt, out]).await.expect("record");
    let evs = events.for_message(&id).expect("for");
    assert_eq!(evs[1].data["method"], "dane");
    assert_eq!(evs[1].data["tls_version"], "TLSv1.3");
    assert_eq!(evs[1].data["mx_host"], "mx.example.org");
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1].kind, "message.delivered");
    assert_eq!(evs[1].owner.as_deref(), Some("password:ehr"));
    assert_eq!(events.purge_before(u64::MAX, 1).expect("purge"), 1);
    assert_eq!(events.page(None, 10, None).expect("p").events.len(), 1);
    // The per-message index follows the purge.
    assert_eq!(events.for_message(&id).expect("for").len(), 1);
}

#[tokio::test]
async fn security_alert_is_an_event_without_addresses() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_spool, audit, events) = open(dir.path());
    let ev = AuditEvent::new(Kind::SecurityAlert)
        .field("alert", "auth_failures")
        .field("identity", "password:ehr")
        .field("rule", "auth_failures")
        .field("counts", serde_json::json!({"failures": 9}));
    audit.record_now(ev);
    audit.flush_deferred();
    let p = events.page(None, 10, None).expect("page");
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].kind, "security.alert");
    assert_eq!(p.events[0].data["counts"]["failures"], 9);
}

#[tokio::test]
async fn damaged_record_is_skipped_not_a_stall() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit, events) = open(dir.path());
    send(&spool, &audit, "ehr").await;
    let first = events.page(None, 10, None).expect("page");
    let c = first.next.expect("cursor");
    // A record that is not an event at all, right after the first one.
    spool
        .store()
        .commit(&[Op::Put(
            Tree::Events,
            (c + 1).to_be_bytes().to_vec(),
            b"{not json".to_vec(),
        )])
        .expect("put");
    send(&spool, &audit, "ehr").await;
    let rest = events.page(Some(c), 10, None).expect("page after damage");
    assert_eq!(rest.events.len(), 1, "the damaged record is skipped");
    assert!(rest.events[0].cursor > c + 1);
    assert_eq!(rest.next, Some(rest.events[0].cursor));
}
