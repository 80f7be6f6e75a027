//! Spool benchmarks: durable enqueue rate at 10 KB (1 and 32 writers) and seal/open MB/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phigate::spool::crypto::{open, seal, DataKey, RecordKind};
use phigate::spool::{Keyring, RecipientState, Spool};
use phigate::types::{Envelope, MailParams, MessageId, Recipient};

fn envelope() -> Envelope {
    Envelope {
        mail_from: "sender@example.org".into(),
        params: MailParams::default(),
        recipients: vec![Recipient::new("rcpt@example.net")],
        helo: "client.example".into(),
        peer_ip: "192.0.2.1".into(),
        listener: "submission".into(),
        auth: None,
        tls: None,
        received_at: 0,
        tls_floor: None,
        session: String::new(),
    }
}

fn enqueue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Arc::new(Spool::open(dir.path(), Keyring::generate()).expect("open"));
    let body = Arc::new(vec![b'x'; 10 * 1024]);
    let mut g = c.benchmark_group("durable_enqueue_10k");
    g.throughput(Throughput::Elements(1));
    for writers in [1u64, 32] {
        g.bench_function(format!("{writers}_writers"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let spool = spool.clone();
                let body = body.clone();
                async move {
                    let per = iters.div_ceil(writers);
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for _ in 0..writers {
                        let spool = spool.clone();
                        let body = body.clone();
                        tasks.push(tokio::spawn(async move {
                            let env = envelope();
                            for _ in 0..per {
                                spool
                                    .enqueue(
                                        MessageId::new(),
                                        &env,
                                        &body,
                                        RecipientState::queued(0),
                                    )
                                    .await
                                    .expect("enqueue");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("join");
                    }
                    // Report time per requested iteration even if rounding added a few.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * writers) as f64)
                }
            })
        });
    }
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let dk = DataKey::generate();
    let id = MessageId::new();
    let mut g = c.benchmark_group("crypto");
    for size in [10 * 1024usize, 1024 * 1024] {
        let data = vec![0x5au8; size];
        let blob = seal(&dk, &id, RecordKind::Content, &data);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("seal_{}k", size / 1024), |b| {
            b.iter(|| seal(&dk, &id, RecordKind::Content, &data))
        });
        g.bench_function(format!("open_{}k", size / 1024), |b| {
            b.iter(|| open(&dk, &id, RecordKind::Content, &blob).expect("open"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = enqueue, seal_open
}
criterion_main!(benches);
