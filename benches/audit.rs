//! Timed bench: append 100,000 audit records, then time a full JSONL export (streamed
//! to a sink) and a full verify. Run with `cargo bench --bench audit`.

use std::sync::Arc;
use std::time::Instant;

use phigate::audit::{export, verify, Audit, AuditEvent, AuditSettings, ExportFilter, Format};
use phigate::spool::{Keyring, MasterKey, Spool};
use phigate::types::MessageId;

const N: usize = 100_000;

fn main() {
    let ring =
        || Keyring::from_keys(vec![MasterKey::from_bytes("k1", 0, [1u8; 32])], "k1").expect("ring");
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = Arc::new(Spool::open(&tmp.path().join("spool"), ring()).expect("spool"));
    let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("audit");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let t = Instant::now();
    rt.block_on(async {
        for _ in 0..N / 100 {
            let id = MessageId::new();
            let events = (0..100)
                .map(|i| {
                    AuditEvent::new(phigate::audit::Kind::Delivered)
                        .message(id)
                        .field("rcpt_index", i)
                        .person("recipient", "patient@example.net")
                })
                .collect();
            audit.record(events).await.expect("record");
        }
    });
    println!("append {N} records (batches of 100): {:?}", t.elapsed());
    let t = Instant::now();
    let n = export(
        spool.store().as_ref(),
        &spool.keyring(),
        &ExportFilter::default(),
        Format::Jsonl,
        &mut std::io::sink(),
    )
    .expect("export");
    let e = t.elapsed();
    assert_eq!(n as usize, N);
    println!(
        "export {n} records as JSONL: {e:?} ({:.0} records/s)",
        n as f64 / e.as_secs_f64()
    );
    let t = Instant::now();
    let r = verify(spool.store().as_ref(), &spool.keyring(), None).expect("verify");
    println!("verify {} records: {:?}", r.records, t.elapsed());
}
