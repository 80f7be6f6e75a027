//! Spool behaviour against a real sled store on disk.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use phigate::spool::{
    Keyring, MasterKey, Op, RecipientState, SledStore, Spool, SpoolError, StateTag, Store, Tree,
};
use phigate::types::{now_secs, Envelope, MailParams, MessageId, Recipient, Status};

fn envelope(from: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        mail_from: from.to_string(),
        params: MailParams::default(),
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        helo: "client.example".into(),
        peer_ip: "192.0.2.1".into(),
        listener: "submission".into(),
        auth: None,
        tls: None,
        received_at: now_secs(),
        tls_floor: None,
        session: String::new(),
    }
}

/// A spool plus direct access to its store, for tampering.
fn open_raw(dir: &Path, ring: Keyring) -> (Spool, Arc<SledStore>) {
    let raw = Arc::new(SledStore::open(dir).expect("store"));
    let store: Arc<dyn Store> = raw.clone();
    (Spool::with_store(store, ring).expect("spool"), raw)
}

fn ring_copy(ring: &Keyring) -> Keyring {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("k");
    ring.save_new(&p).expect("save");
    Keyring::load(&p).expect("load")
}

#[tokio::test]
async fn round_trip_state_and_schedule() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(dir.path(), Keyring::generate()).expect("open");
    let id = MessageId::new();
    let env = envelope("a@example.org", &["b@example.net", "c@example.com"]);
    spool
        .enqueue(
            id,
            &env,
            b"Subject: hi\r\n\r\nbody\r\n",
            RecipientState::queued(100),
        )
        .await
        .expect("enqueue");
    let (env2, content) = spool.load(&id).expect("load");
    assert_eq!(env2, env);
    assert_eq!(content, b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!(spool.due(99).expect("due"), Vec::<MessageId>::new());
    assert_eq!(spool.due(100).expect("due"), vec![id]);

    let mut states = spool.recipients(&id).expect("states");
    assert_eq!(states.len(), 2);
    states[0].status = Status::Delivered {
        reply: "250 ok".into(),
    };
    states[1].status = Status::Deferred {
        next_attempt: 500,
        reason: "451 try later".into(),
    };
    states[1].attempts = 1;
    spool.set_recipients(&id, &states).await.expect("set");
    assert!(spool.due(499).expect("due").is_empty());
    assert_eq!(spool.due(500).expect("due"), vec![id]);
    assert_eq!(spool.recipients(&id).expect("states"), states);

    let stats = spool.stats(now_secs()).expect("stats");
    assert_eq!(stats.pending, 1);
    assert_eq!(stats.recipients_by_state.get(&StateTag::Deferred), Some(&1));
    assert_eq!(
        stats.recipients_by_state.get(&StateTag::Delivered),
        Some(&1)
    );

    let wrong = vec![RecipientState::queued(0)];
    assert!(matches!(
        spool.set_recipients(&id, &wrong).await,
        Err(SpoolError::RecipientCount { .. })
    ));
    assert!(matches!(
        spool
            .enqueue(id, &env, b"x", RecipientState::queued(0))
            .await,
        Err(SpoolError::Exists(_))
    ));
}

#[tokio::test]
async fn tampering_is_detected() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut ring = Keyring::generate();
    let first_key = ring.current().id().to_string();
    ring.rotate();
    let (spool, raw) = open_raw(dir.path(), ring);
    let env = envelope("a@example.org", &["b@example.net"]);
    let ids: Vec<MessageId> = (0..4).map(|_| MessageId::new()).collect();
    for id in &ids {
        spool
            .enqueue(*id, &env, b"content", RecipientState::queued(0))
            .await
            .expect("enqueue");
    }
    let k = |id: &MessageId| id.0.to_bytes().to_vec();

    // 1. A flipped ciphertext byte.
    let mut blob = raw
        .get(Tree::Messages, &k(&ids[0]))
        .expect("get")
        .expect("row");
    let n = blob.len() - 3;
    blob[n] ^= 0x01;
    raw.commit(&[Op::Put(Tree::Messages, k(&ids[0]), blob)])
        .expect("put");
    assert!(tampered(spool.load(&ids[0])));

    // 2. Content blobs swapped between two messages.
    let b1 = raw
        .get(Tree::Messages, &k(&ids[1]))
        .expect("get")
        .expect("row");
    let b2 = raw
        .get(Tree::Messages, &k(&ids[2]))
        .expect("get")
        .expect("row");
    raw.commit(&[
        Op::Put(Tree::Messages, k(&ids[1]), b2),
        Op::Put(Tree::Messages, k(&ids[2]), b1),
    ])
    .expect("swap");
    assert!(tampered(spool.load(&ids[1])));
    assert!(tampered(spool.load(&ids[2])));
    // The envelopes were untouched and still open.
    assert_eq!(spool.envelope(&ids[1]).expect("env"), env);

    // 3. The wrapped key relabelled with another (existing) master key ID.
    let w = raw
        .get(Tree::Wraps, &k(&ids[3]))
        .expect("get")
        .expect("row");
    let id_len = w[1] as usize;
    let current = std::str::from_utf8(&w[2..2 + id_len]).expect("utf8");
    assert_ne!(current, first_key);
    let mut relabelled = w.clone();
    relabelled[2..2 + id_len].copy_from_slice(first_key.as_bytes());
    raw.commit(&[Op::Put(Tree::Wraps, k(&ids[3]), relabelled)])
        .expect("put");
    assert!(tampered(spool.load(&ids[3])));

    // 4. The data-key ID in the envelope blob header changed.
    raw.commit(&[Op::Put(Tree::Wraps, k(&ids[3]), w)])
        .expect("restore");
    let mut e = raw
        .get(Tree::Envelopes, &k(&ids[3]))
        .expect("get")
        .expect("row");
    e[2] ^= 0xff;
    raw.commit(&[Op::Put(Tree::Envelopes, k(&ids[3]), e)])
        .expect("put");
    assert!(tampered(spool.envelope(&ids[3])));
    let msg = spool.load(&ids[3]).expect_err("tampered").to_string();
    assert!(msg.contains(&ids[3].to_string()), "{msg}");
}

#[tokio::test]
async fn three_key_generations_rotate_and_rewrap() {
    let dir = tempfile::tempdir().expect("tmp");
    let kdir = tempfile::tempdir().expect("tmp");
    let kpath = kdir.path().join("keys.toml");
    phigate::spool::keys::generate_file(&kpath).expect("generate");
    let env = envelope("a@example.org", &["b@example.net"]);
    let mut ids = Vec::new();
    let mut gens = Vec::new();
    for generation in 0..3 {
        if generation > 0 {
            phigate::spool::keys::rotate_file(&kpath).expect("rotate");
        }
        let ring = Keyring::load(&kpath).expect("load");
        gens.push(ring.current().id().to_string());
        let spool = Spool::open(dir.path(), ring).expect("open");
        for i in 0..3 {
            let id = MessageId::new();
            let body = format!("generation {generation} message {i}");
            spool
                .enqueue(id, &env, body.as_bytes(), RecipientState::queued(0))
                .await
                .expect("enqueue");
            ids.push((id, body));
        }
    }
    let spool = Spool::open(dir.path(), Keyring::load(&kpath).expect("load")).expect("open");
    let usage = spool.key_usage().expect("usage");
    for g in &gens {
        assert_eq!(usage.get(g), Some(&3), "{usage:?}");
    }
    for (id, body) in &ids {
        assert_eq!(spool.load(id).expect("load").1, body.as_bytes());
    }
    let ring = Keyring::load(&kpath).expect("load");
    assert_eq!(ring.list().len(), 3);
    assert_eq!(spool.rewrap().await.expect("rewrap"), 6);
    let usage = spool.key_usage().expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage.get(&gens[2]), Some(&9));
    drop(spool);

    // Retire both old keys; everything still opens with the current one alone.
    phigate::spool::keys::remove_from_file(&kpath, &gens[0]).expect("remove");
    phigate::spool::keys::remove_from_file(&kpath, &gens[1]).expect("remove");
    let ring = Keyring::load(&kpath).expect("load");
    assert_eq!(ring.list().len(), 1);
    let spool = Spool::open(dir.path(), ring).expect("open after retiring");
    for (id, body) in &ids {
        assert_eq!(spool.load(id).expect("load").1, body.as_bytes());
    }
}

#[tokio::test]
async fn missing_or_wrong_master_key_is_a_clear_open_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let ring = Keyring::generate();
    let kid = ring.current().id().to_string();
    let spool = Spool::open(dir.path(), ring_copy(&ring)).expect("open");
    spool
        .enqueue(
            MessageId::new(),
            &envelope("a@example.org", &["b@example.net"]),
            b"x",
            RecipientState::queued(0),
        )
        .await
        .expect("enqueue");
    drop(spool);

    match Spool::open(dir.path(), Keyring::generate()) {
        Err(SpoolError::MissingKeys(ids)) => assert_eq!(ids, vec![kid.clone()]),
        other => panic!("expected MissingKeys, got {other:?}"),
    }
    let err = Spool::open(dir.path(), Keyring::generate()).expect_err("missing");
    assert!(err.to_string().contains(&kid), "{err}");

    let impostor =
        Keyring::from_keys(vec![MasterKey::from_bytes(&kid, 0, [7u8; 32])], &kid).expect("ring");
    match Spool::open(dir.path(), impostor) {
        Err(SpoolError::WrongKey { id }) => assert_eq!(id, kid),
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // The right key still works: nothing was lost by the failed attempts.
    let spool = Spool::open(dir.path(), ring).expect("reopen");
    assert_eq!(spool.pending().expect("pending").len(), 1);
}

fn tampered<T>(r: Result<T, SpoolError>) -> bool {
    matches!(r, Err(SpoolError::Tampered { .. }))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readdir").flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn canary_never_reaches_disk() {
    let canary = "CanaryZx81Qv";
    let dir = tempfile::tempdir().expect("tmp");
    let ring = Keyring::generate();
    let spool = Spool::open(dir.path(), ring_copy(&ring)).expect("open");
    let from = format!("{canary}@sender.example");
    let to = format!("patient.{canary}@example.net");
    let env = envelope(&from, &[&to]);
    let body = format!("Subject: {canary}\r\n\r\nDiagnosis for {canary}\r\n");
    let id = MessageId::new();
    spool
        .enqueue(id, &env, body.as_bytes(), RecipientState::queued(0))
        .await
        .expect("enqueue");
    let mut states = spool.recipients(&id).expect("states");
    states[0].status = Status::Deferred {
        next_attempt: 1,
        reason: format!("450 mailbox {to} busy"),
    };
    states[0].last_error = Some(format!("450 {to}"));
    spool.set_recipients(&id, &states).await.expect("set");
    spool.meta_put("note", b"harmless").await.expect("meta");
    drop(spool);

    let mut needles: Vec<Vec<u8>> = vec![
        canary.as_bytes().to_vec(),
        canary.to_lowercase().into_bytes(),
        hex::encode(canary).into_bytes(),
        hex::encode_upper(canary).into_bytes(),
    ];
    // Base64 of the canary at each of the three byte alignments, minus edge characters.
    for pad in 0..3 {
        let mut s = vec![b'#'; pad];
        s.extend_from_slice(canary.as_bytes());
        let enc = base64::engine::general_purpose::STANDARD.encode(&s);
        let inner = &enc.as_bytes()[pad * 4 / 3 + 2..enc.len() - 4];
        needles.push(inner.to_vec());
    }
    let mut files = Vec::new();
    walk(dir.path(), &mut files);
    // Control: clear metadata written in the same session is found, so the search sees
    // what the spool wrote.
    assert!(files
        .iter()
        .any(|f| contains(&std::fs::read(f).expect("read"), b"harmless")));
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for n in &needles {
            assert!(
                !contains(&bytes, n),
                "{} contains {:?}",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    // ...while the spool itself still recovers it.
    let spool = Spool::open(dir.path(), ring).expect("reopen");
    let (env2, content) = spool.load(&id).expect("load");
    assert_eq!(env2.recipients[0].address, to);
    assert!(contains(&content, canary.as_bytes()));
}

#[tokio::test]
async fn shredded_message_cannot_be_loaded_and_is_purged() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, raw) = open_raw(dir.path(), Keyring::generate());
    let id = MessageId::new();
    spool
        .enqueue(
            id,
            &envelope("a@example.org", &["b@example.net"]),
            b"secret",
            RecipientState::queued(0),
        )
        .await
        .expect("enqueue");
    let mut states = spool.recipients(&id).expect("states");
    states[0].status = Status::Delivered {
        reply: "250 ok".into(),
    };
    spool.set_recipients(&id, &states).await.expect("set");
    spool.shred(&id).await.expect("shred");
    assert!(matches!(spool.load(&id), Err(SpoolError::Shredded(_))));
    assert!(matches!(spool.envelope(&id), Err(SpoolError::Shredded(_))));
    let k = id.0.to_bytes();
    for t in [Tree::Wraps, Tree::Messages, Tree::Envelopes] {
        assert_eq!(raw.get(t, &k).expect("get"), None);
    }
    assert!(spool.key_usage().expect("usage").is_empty());
    assert!(spool.summary(&id).expect("summary").shredded_at.is_some());
    assert_eq!(
        spool
            .purge_finished_before(now_secs() + 1)
            .await
            .expect("purge"),
        1
    );
    assert!(matches!(spool.summary(&id), Err(SpoolError::NotFound(_))));
}

#[tokio::test]
async fn final_states_and_shred_are_one_write() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spool, raw) = open_raw(dir.path(), Keyring::generate());
    let id = MessageId::new();
    let env = envelope("a@example.org", &["b@example.net", "c@example.net"]);
    spool
        .enqueue(id, &env, b"secret", RecipientState::queued(0))
        .await
        .expect("enqueue");
    let mut states = spool.recipients(&id).expect("states");
    // Not all final: behaves like set_recipients and keeps the content.
    states[0].status = Status::Delivered {
        reply: "250 ok".into(),
    };
    spool
        .finish_and_shred_with(&id, &states, &phigate::spool::NoAttach)
        .await
        .expect("partial");
    assert!(spool.load(&id).is_ok());
    assert_eq!(spool.due(now_secs() + 1).expect("due"), vec![id]);
    // All final: states recorded, content shredded, nothing scheduled.
    states[1].status = Status::Bounced {
        reason: "550 5.1.1 no".into(),
    };
    let flushes = spool.flush_count();
    spool
        .finish_and_shred_with(&id, &states, &phigate::spool::NoAttach)
        .await
        .expect("final");
    assert!(spool.flush_count() <= flushes + 1);
    assert!(matches!(spool.load(&id), Err(SpoolError::Shredded(_))));
    let summary = spool.summary(&id).expect("summary");
    assert!(summary.done_at.is_some() && summary.shredded_at.is_some());
    assert!(spool.due(now_secs() + 1).expect("due").is_empty());
    assert_eq!(raw.get(Tree::Wraps, &id.0.to_bytes()).expect("get"), None);
}

#[tokio::test]
async fn reopen_recovers_pending_and_requeues_in_flight() {
    let dir = tempfile::tempdir().expect("tmp");
    let ring = Keyring::generate();
    let env = envelope("a@example.org", &["b@example.net"]);
    let (a, b, c) = (MessageId::new(), MessageId::new(), MessageId::new());
    {
        let spool = Spool::open(dir.path(), ring_copy(&ring)).expect("open");
        for id in [a, b, c] {
            spool
                .enqueue(id, &env, b"x", RecipientState::queued(10))
                .await
                .expect("enqueue");
        }
        let mut s = spool.recipients(&b).expect("states");
        s[0].status = Status::Delivered {
            reply: "250".into(),
        };
        spool.set_recipients(&b, &s).await.expect("set");
        let mut s = spool.recipients(&c).expect("states");
        s[0].status = Status::InFlight;
        spool.set_recipients(&c, &s).await.expect("set");
        assert_eq!(spool.due(1000).expect("due"), vec![a]);
    }
    let spool = Spool::open(dir.path(), ring).expect("reopen");
    let mut pending = spool.recover(50).await.expect("recover");
    pending.sort();
    let mut expected = vec![a, c];
    expected.sort();
    assert_eq!(pending, expected);
    assert_eq!(spool.due(50).expect("due"), vec![a, c]);
    assert_eq!(
        spool.recipients(&c).expect("states")[0].status,
        Status::Queued
    );
}

#[tokio::test]
async fn quarantine_and_release() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(dir.path(), Keyring::generate()).expect("open");
    let id = MessageId::new();
    spool
        .enqueue(
            id,
            &envelope("a@example.org", &["b@example.net"]),
            b"x",
            RecipientState::queued(0),
        )
        .await
        .expect("enqueue");
    spool.quarantine(&id, "ssn").await.expect("quarantine");
    assert!(spool.due(u64::MAX - 1).expect("due").is_empty());
    let q = spool.quarantined().expect("list");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1.rule, "ssn");
    spool.release(&id, 5).await.expect("release");
    assert!(spool.quarantined().expect("list").is_empty());
    assert_eq!(spool.due(5).expect("due"), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_share_flushes() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Arc::new(Spool::open(dir.path(), Keyring::generate()).expect("open"));
    let before = spool.flush_count();
    let per_task = 8;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let env = envelope("a@example.org", &["b@example.net"]);
            let mut ids = Vec::new();
            for i in 0..per_task {
                let id = MessageId::new();
                let body = format!("task {t} msg {i}");
                spool
                    .enqueue(id, &env, body.as_bytes(), RecipientState::queued(0))
                    .await
                    .expect("enqueue");
                ids.push((id, body));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    assert_eq!(all.len(), 32 * per_task);
    for (id, body) in &all {
        assert_eq!(spool.load(id).expect("load").1, body.as_bytes());
    }
    // How many flushes the commits share depends on how the tasks interleave (a slow or
    // single-core machine may serialise them); the property is no loss and never more
    // than one flush per commit.
    let flushes = spool.flush_count() - before;
    assert!(
        flushes <= all.len() as u64,
        "{flushes} flushes for {} messages",
        all.len()
    );
    assert_eq!(spool.pending().expect("pending").len(), all.len());
}

fn blob_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Content over the inline limit lives in an encrypted blob file, not in sled: it loads
/// intact across a reopen, its plaintext is on disk nowhere, a tampered file is
/// `Tampered`, shredding removes the file, and an orphan (a crash between the blob write
/// and the record commit) is swept at open.
#[tokio::test]
async fn large_content_lives_in_a_blob_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let ring = Keyring::generate();
    let canary = "BLOB-CANARY-7e1d";
    let mut content = format!("Subject: scan\r\n\r\n{canary}\r\n").into_bytes();
    content.extend(std::iter::repeat_n(
        b'x',
        phigate::spool::blob::INLINE_MAX + 5,
    ));
    content.extend_from_slice(format!("\r\n{canary}\r\n").as_bytes());
    let id = MessageId::new();
    {
        let spool = Spool::open(dir.path(), ring_copy(&ring)).expect("open");
        spool
            .enqueue(
                id,
                &envelope("a@example.org", &["b@example.net"]),
                &content,
                RecipientState::queued(0),
            )
            .await
            .expect("enqueue");
        assert_eq!(spool.load(&id).expect("load").1, content);
    }
    let files = blob_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let mut all = Vec::new();
    walk(dir.path(), &mut all);
    for f in &all {
        let bytes = std::fs::read(f).expect("read");
        assert!(
            !contains(&bytes, canary.as_bytes()),
            "plaintext in {}",
            f.display()
        );
    }
    // An orphan and a leftover temporary file, as a crash would leave them.
    let orphan = dir
        .path()
        .join("blobs")
        .join(format!("{}.blob", MessageId::new()));
    std::fs::copy(&files[0], &orphan).expect("orphan");
    std::fs::write(dir.path().join("blobs").join("x.tmp"), b"partial").expect("tmp");

    let spool = Spool::open(dir.path(), ring_copy(&ring)).expect("reopen");
    assert_eq!(
        blob_files(dir.path()),
        files,
        "orphans swept, the live blob kept"
    );
    assert_eq!(spool.load(&id).expect("load after reopen").1, content);
    let good = std::fs::read(&files[0]).expect("blob");
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(&files[0], &bad).expect("tamper");
    assert!(tampered(spool.load(&id)), "a flipped bit went unnoticed");
    std::fs::write(&files[0], &good).expect("restore");
    spool.shred(&id).await.expect("shred");
    assert!(matches!(spool.load(&id), Err(SpoolError::Shredded(_))));
    assert!(
        blob_files(dir.path()).is_empty(),
        "the shredded blob file stayed"
    );
}
