//! Disk-full behaviour. Needs a small dedicated filesystem, so it only runs when
//! `PHIGATE_SMALL_FS` names a writable directory on one (e.g. a 2 MB tmpfs):
//! `PHIGATE_SMALL_FS=/mnt/small cargo test --test spool_disk_full -- --ignored`
//! (scripts/test.sh mounts one). Run without it, the test fails under CI=true and says
//! SKIP otherwise.

use std::path::PathBuf;

use phigate::spool::{Keyring, RecipientState, Spool, SpoolError};
use phigate::types::{now_secs, Envelope, MailParams, MessageId, Recipient};

fn envelope() -> Envelope {
    Envelope {
        mail_from: "a@example.org".into(),
        params: MailParams::default(),
        recipients: vec![Recipient::new("b@example.net")],
        helo: "h".into(),
        peer_ip: "192.0.2.1".into(),
        listener: "l".into(),
        auth: None,
        tls: None,
        received_at: now_secs(),
        tls_floor: None,
        session: String::new(),
    }
}

#[tokio::test]
#[ignore = "needs PHIGATE_SMALL_FS pointing at a small filesystem"]
async fn full_disk_gives_io_error_and_recovers() {
    let Some(root) = std::env::var_os("PHIGATE_SMALL_FS").map(PathBuf::from) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PHIGATE_SMALL_FS is not set (CI=true): the disk-full test needs a small filesystem"
        );
        eprintln!("SKIP: PHIGATE_SMALL_FS not set; the disk-full test needs a small filesystem");
        return;
    };
    let dir = root.join("spool");
    let _ = std::fs::remove_dir_all(&dir);
    let spool = Spool::open(&dir, Keyring::generate()).expect("open");
    // Ballast to delete later, standing in for an operator freeing space.
    let ballast = root.join("ballast");
    std::fs::write(&ballast, vec![0u8; 512 * 1024]).expect("ballast");
    let body = vec![b'x'; 64 * 1024];
    let mut accepted = Vec::new();
    let mut failure = None;
    for _ in 0..10_000 {
        let id = MessageId::new();
        match spool
            .enqueue(id, &envelope(), &body, RecipientState::queued(0))
            .await
        {
            Ok(()) => accepted.push(id),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the small filesystem must fill up");
    assert!(matches!(failure, SpoolError::Io(_)), "{failure:?}");
    eprintln!("accepted {} before: {failure}", accepted.len());
    assert!(!accepted.is_empty());

    std::fs::remove_file(&ballast).expect("free space");
    // Service resumes on the same Spool, and nothing acknowledged was lost or corrupted.
    for id in &accepted {
        assert_eq!(spool.load(id).expect("accepted message loads").1, body);
    }
    let id = MessageId::new();
    spool
        .enqueue(id, &envelope(), b"small", RecipientState::queued(0))
        .await
        .expect("enqueue after space returned");
    assert_eq!(spool.load(&id).expect("load").1, b"small");
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}
