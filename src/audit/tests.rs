use super::*;
use crate::spool::{MasterKey, RecipientState};
use crate::types::{now_secs, Envelope, MessageId, Recipient};

fn ring() -> Keyring {
    Keyring::from_keys(vec![MasterKey::from_bytes("k1", 0, [9u8; 32])], "k1").expect("ring")
}

fn open(dir: &std::path::Path) -> (Arc<Spool>, Arc<Audit>) {
    let spool = Arc::new(Spool::open(dir, ring()).expect("spool"));
    let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("audit");
    (spool, audit)
}

fn env() -> Envelope {
    Envelope {
        mail_from: "dr.who@clinic.test".into(),
        params: Default::default(),
        recipients: vec![Recipient::new("pat@example.org")],
        helo: "h".into(),
        peer_ip: "127.0.0.1".into(),
        listener: "smtps".into(),
        auth: None,
        tls: None,
        received_at: now_secs(),
        tls_floor: None,
        session: String::new(),
    }
}

#[tokio::test]
async fn appends_chain_and_verify_ok() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit) = open(dir.path());
    let id = MessageId::new();
    let e = env();
    let events = vec![
        AuditEvent::message_received(id, &e, 10),
        AuditEvent::spooled(id, "k1", false),
    ];
    spool
        .enqueue_with(
            id,
            &e,
            b"x",
            RecipientState::queued(0),
            &audit.batch(events),
        )
        .await
        .expect("enqueue");
    audit
        .record(vec![AuditEvent::config_reload(true, "test")])
        .await
        .expect("record");
    let (seq, hash) = audit.head();
    assert_eq!(seq, 3);
    let r = verify(spool.store().as_ref(), &spool.keyring(), None).expect("verify");
    assert_eq!(r.records, 3);
    assert_eq!(r.head_hash, hash);
    assert_eq!(r.to_string(), format!("ok 3 records, head {hash}"));
    // The head survives a reopen.
    drop(audit);
    let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("reopen");
    assert_eq!(audit.head(), (3, hash));
}

#[tokio::test]
async fn failed_state_change_writes_no_record() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit) = open(dir.path());
    let id = MessageId::new();
    let e = env();
    spool
        .enqueue_with(
            id,
            &e,
            b"x",
            RecipientState::queued(0),
            &audit.batch(vec![]),
        )
        .await
        .expect("first");
    // A duplicate enqueue fails before committing: its record must not exist either.
    let res = spool
        .enqueue_with(
            id,
            &e,
            b"x",
            RecipientState::queued(0),
            &audit.batch(vec![AuditEvent::spooled(id, "k1", false)]),
        )
        .await;
    assert!(res.is_err());
    assert_eq!(audit.head().0, 0);
}

#[tokio::test]
async fn export_filters_and_decrypts() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit) = open(dir.path());
    let a = MessageId::new();
    let b = MessageId::new();
    let e = env();
    audit
        .record(vec![
            AuditEvent::message_received(a, &e, 1),
            AuditEvent::spooled(b, "k1", false),
        ])
        .await
        .expect("record");
    let mut out = Vec::new();
    let n = export(
        spool.store().as_ref(),
        &spool.keyring(),
        &ExportFilter {
            recipient: Some("PAT@example.org".into()),
            ..Default::default()
        },
        Format::Jsonl,
        &mut out,
    )
    .expect("export");
    assert_eq!(n, 1);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["kind"], "message_received");
    assert_eq!(v["sender"], "dr.who@clinic.test");
    let mut csv = Vec::new();
    let n = export(
        spool.store().as_ref(),
        &spool.keyring(),
        &ExportFilter {
            message: Some(b.to_string()),
            ..Default::default()
        },
        Format::Csv,
        &mut csv,
    )
    .expect("csv");
    assert_eq!(n, 1);
    let text = String::from_utf8(csv).expect("utf8");
    assert!(
        text.starts_with("seq,time,kind,message_id,details\n2,"),
        "{text}"
    );
}

#[tokio::test]
async fn purge_keeps_an_anchor_and_verify_still_passes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit) = open(dir.path());
    for _ in 0..5 {
        audit
            .record(vec![AuditEvent::config_reload(true, "t")])
            .await
            .expect("record");
    }
    let n = audit.purge_before(u64::MAX, 3).await.expect("purge");
    assert_eq!(n, 3);
    let r = verify(spool.store().as_ref(), &spool.keyring(), None).expect("verify");
    assert_eq!((r.first_seq, r.records, r.head_seq), (4, 3, 6));
    // Deleting the anchor makes the purged prefix look missing.
    spool
        .store()
        .commit(&[Op::Delete(Tree::AuditMeta, ANCHOR_KEY.to_vec())])
        .expect("delete anchor");
    assert_eq!(
        verify(spool.store().as_ref(), &spool.keyring(), None),
        Err(Broken::Missing { seq: 1 })
    );
}

#[tokio::test]
async fn concurrent_appends_keep_seq_order_equal_to_chain_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, audit) = open(dir.path());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let a = audit.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                a.record(vec![AuditEvent::config_reload(true, "t")])
                    .await
                    .expect("record");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let r = verify(spool.store().as_ref(), &spool.keyring(), None).expect("verify");
    assert_eq!(r.records, 160);
}
