//! Timed bench for `phigate audit incident` (#17: over 1,000,000 audit records the report
//! must finish in under 10 s). Appends a realistic mix (received, policy decision,
//! spooled, delivery attempt, delivered: five records per message), then times the chain
//! verification the report starts with and the report itself over the whole window.
//! Run with `cargo bench --bench incident`; `INCIDENT_RECORDS=N` changes the size.
//! Under `cargo test` it runs on 5,000 records only.

use std::sync::Arc;
use std::time::Instant;

use phigate::audit::incident::{incident, verified_incident, IncidentFilter};
use phigate::audit::{verify, Audit, AuditEvent, AuditSettings, Kind};
use phigate::spool::{Keyring, MasterKey, Spool};
use phigate::types::MessageId;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` (scripts/test.sh) does not,
    // and then this is a quick smoke run, not a debug-build minute.
    let full = std::env::args().any(|a| a == "--bench");
    let records: usize = std::env::var("INCIDENT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 5_000 });
    let ring =
        || Keyring::from_keys(vec![MasterKey::from_bytes("k1", 0, [1u8; 32])], "k1").expect("ring");
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = Arc::new(Spool::open(&tmp.path().join("spool"), ring()).expect("spool"));
    let audit = Audit::open(spool.clone(), AuditSettings::default()).expect("audit");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let t = Instant::now();
    let messages = records / 5;
    rt.block_on(async {
        let mut batch = Vec::new();
        for m in 0..messages {
            let id = MessageId::new();
            let rcpt = format!("patient{m}@d{}.example", m % 50);
            batch.push(
                AuditEvent::new(Kind::MessageReceived)
                    .message(id)
                    .field("peer_ip", "192.0.2.7")
                    .field("recipient_count", 1)
                    .person("recipients", vec![rcpt.clone()])
                    .person("auth_identity", format!("password:ehr{}", m % 10)),
            );
            batch.push(AuditEvent::policy_decision(
                id,
                "accept",
                "default",
                &[("accept".into(), "default".into())],
                "ssn=1",
            ));
            batch.push(AuditEvent::spooled(id, "k1", false));
            batch.push(
                AuditEvent::new(Kind::DeliveryAttempt)
                    .message(id)
                    .field("rcpt_index", 0)
                    .field("tls_version", "TLSv1.3")
                    .field("method", "dane-ee")
                    .field("peer_cert_sha256", "ab".repeat(32))
                    .field("mx_host", "mx.example")
                    .person("recipient", rcpt.as_str()),
            );
            batch.push(
                AuditEvent::new(Kind::Delivered)
                    .message(id)
                    .field("rcpt_index", 0)
                    .person("recipient", rcpt.as_str()),
            );
            if batch.len() >= 5000 {
                audit
                    .record(std::mem::take(&mut batch))
                    .await
                    .expect("record");
            }
        }
        if !batch.is_empty() {
            audit.record(batch).await.expect("record");
        }
    });
    println!("append {} records: {:?}", messages * 5, t.elapsed());
    let ring = spool.keyring();
    let store = spool.store().as_ref();
    let t = Instant::now();
    let r = verify(store, &ring, None).expect("verify");
    let verified = t.elapsed();
    let t = Instant::now();
    let alone = incident(
        store,
        &ring,
        &IncidentFilter::default(),
        None,
        String::new(),
    )
    .expect("report");
    let report_only = t.elapsed();
    assert_eq!(alone.rows.len(), messages);
    // What `phigate audit incident` runs: verification and report side by side.
    let t = Instant::now();
    let report = verified_incident(store, &ring, &IncidentFilter::default(), None, || {
        verify(store, &ring, None)
    })
    .expect("verified incident");
    let total = t.elapsed();
    assert_eq!(report.rows.len(), messages);
    println!(
        "incident over {} records: verify {verified:?}, report {report_only:?}, \
         phigate audit incident (both, in parallel) {total:?} ({} rows, {} individuals)",
        r.records,
        report.rows.len(),
        report.summary.individuals
    );
}
