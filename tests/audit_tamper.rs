//! Tamper tests: build a real audit trail, copy the sled store, damage the copy one way
//! at a time, and check that `verify` names the damaged record.

use std::path::Path;
use std::sync::Arc;

use phigate::audit::{verify, Audit, AuditEvent, AuditSettings, Broken};
use phigate::spool::{Keyring, MasterKey, Op, SledStore, Spool, Store, Tree};

const N: u64 = 10;

fn ring() -> Keyring {
    Keyring::from_keys(vec![MasterKey::from_bytes("k1", 0, [5u8; 32])], "k1").expect("ring")
}

/// A closed store holding N records; returns the head (seq, hash).
fn build(dir: &Path) -> (u64, [u8; 32]) {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let spool = Arc::new(Spool::open(dir, ring()).expect("spool"));
    let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("audit");
    rt.block_on(async {
        for i in 0..N {
            let ev = AuditEvent::config_reload(true, "test")
                .field("i", i)
                .person("admin", "alice@example.org");
            audit.record(vec![ev]).await.expect("record");
        }
    });
    let (seq, hash) = audit.head();
    let hash: [u8; 32] = hex::decode(hash)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    (seq, hash)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Copy the original, let `damage` edit the copy's raw store, then verify the copy.
fn tampered(
    orig: &Path,
    external: Option<(u64, [u8; 32])>,
    damage: impl FnOnce(&dyn Store),
) -> Result<phigate::audit::Report, Broken> {
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = tmp.path().join("spool");
    copy_dir(orig, &copy);
    let store = SledStore::open(&copy).expect("open copy");
    damage(&store);
    store.flush().expect("flush");
    verify(&store, &ring(), external)
}

fn get(store: &dyn Store, seq: u64) -> Vec<u8> {
    store
        .get(Tree::Audit, &seq.to_be_bytes())
        .expect("get")
        .expect("record exists")
}

#[test]
fn every_kind_of_damage_is_caught_and_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let orig = tmp.path().join("spool");
    let head = build(&orig);
    assert_eq!(head.0, N);

    // Untouched copy: ok, and it matches an external head.
    let ok = tampered(&orig, Some(head), |_| {}).expect("intact copy verifies");
    assert_eq!(ok.records, N);
    assert_eq!(ok.head_hash, hex::encode(head.1));

    // Edit one byte of record 4 (a digit in its clear data).
    let r = tampered(&orig, None, |s| {
        let mut v = get(s, 4);
        let pos = v.windows(4).position(|w| w == b"\"i\":").expect("field i") + 4;
        v[pos] = if v[pos] == b'9' { b'8' } else { b'9' };
        s.commit(&[Op::Put(Tree::Audit, 4u64.to_be_bytes().to_vec(), v)])
            .expect("edit");
    });
    assert_eq!(r, Err(Broken::Altered { seq: 4 }));

    // Corrupt the sealed person fields of record 6 without touching the MAC input
    // length: flip a byte of the MAC itself.
    let r = tampered(&orig, None, |s| {
        let mut v = get(s, 6);
        let last = v.len() - 1;
        v[last] ^= 1;
        s.commit(&[Op::Put(Tree::Audit, 6u64.to_be_bytes().to_vec(), v)])
            .expect("edit");
    });
    assert_eq!(r, Err(Broken::Altered { seq: 6 }));

    // Delete record 5.
    let r = tampered(&orig, None, |s| {
        s.commit(&[Op::Delete(Tree::Audit, 5u64.to_be_bytes().to_vec())])
            .expect("delete");
    });
    assert_eq!(r, Err(Broken::Missing { seq: 5 }));

    // Swap records 3 and 7.
    let r = tampered(&orig, None, |s| {
        let (a, b) = (get(s, 3), get(s, 7));
        s.commit(&[
            Op::Put(Tree::Audit, 3u64.to_be_bytes().to_vec(), b),
            Op::Put(Tree::Audit, 7u64.to_be_bytes().to_vec(), a),
        ])
        .expect("swap");
    });
    assert_eq!(r, Err(Broken::Reordered { seq: 3, claims: 7 }));

    // Truncate the tail (records 8..10): caught against the head marker.
    let r = tampered(&orig, None, |s| {
        for seq in 8..=N {
            s.commit(&[Op::Delete(Tree::Audit, seq.to_be_bytes().to_vec())])
                .expect("truncate");
        }
    });
    assert_eq!(r, Err(Broken::Truncated { seq: 8, last: 7 }));

    // Truncate the tail and write a head marker that matches the new end.
    let r = tampered(&orig, Some(head), |s| {
        for seq in 8..=N {
            s.commit(&[Op::Delete(Tree::Audit, seq.to_be_bytes().to_vec())])
                .expect("truncate");
        }
        let marker = serde_json::json!({
            "seq": 7,
            "hash": hex::encode(phigate_hash(&get(s, 7))),
            "key": "k1",
            "mac": "forged",
        });
        s.commit(&[Op::Put(
            Tree::AuditMeta,
            b"head".to_vec(),
            marker.to_string().into_bytes(),
        )])
        .expect("forge head");
    });
    // A forged marker fails its MAC first.
    assert_eq!(r, Err(Broken::HeadMarker { last: 7 }));
    // Without any head marker, the external head still catches the truncation.
    let r = tampered(&orig, Some(head), |s| {
        for seq in 8..=N {
            s.commit(&[Op::Delete(Tree::Audit, seq.to_be_bytes().to_vec())])
                .expect("truncate");
        }
        s.commit(&[Op::Delete(Tree::AuditMeta, b"head".to_vec())])
            .expect("drop head");
    });
    assert_eq!(r, Err(Broken::HeadMarker { last: 7 }));
}

#[test]
fn truncation_against_an_external_head_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let orig = tmp.path().join("spool");
    let head = build(&orig);
    // A logged head whose hash differs from the stored record: altered or forked.
    let r = tampered(&orig, Some((5, [0u8; 32])), |_| {});
    assert_eq!(r, Err(Broken::ExternalMismatch { seq: 5 }));
    // An external head beyond the end of the chain means records were cut off.
    let r = tampered(&orig, Some((head.0 + 3, head.1)), |_| {});
    assert_eq!(
        r,
        Err(Broken::TruncatedExternal {
            seq: N + 1,
            last: N
        })
    );
}

fn phigate_hash(v: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(v).into()
}
