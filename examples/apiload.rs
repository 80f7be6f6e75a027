//! HTTPS API load generator for `bench/compare.sh --api`: N concurrent keep-alive clients
//! POST `/v1/messages` (text body + one base64 attachment, the loadgen mix) with a Bearer
//! key and report accepted messages/s and 202 latency percentiles in loadgen's JSON shape,
//! so `bench/benchlib.py measure` treats both front ends alike.
//!
//! ```text
//! cargo run --release --example apiload -- --target 127.0.0.1:12443 --ca-file ca.pem \
//!     --sni relay.perf.test --key-file key.txt --sessions 50 --messages 2000 --size 10240
//! ```

#[allow(dead_code)]
mod common;

use base64::Engine;
use clap::Parser;
use common::epoch_secs;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "HTTPS submission API load generator (loopback benchmarks)")]
struct Args {
    /// host:port of phigate's `[api] listen`.
    #[arg(long)]
    target: String,
    /// Name in the URL (SNI and certificate check); it must resolve, so `localhost` or an IP.
    #[arg(long, default_value = "127.0.0.1")]
    sni: String,
    #[arg(long)]
    ca_file: PathBuf,
    /// File holding the API key (first line).
    #[arg(long)]
    key_file: PathBuf,
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    #[arg(long, default_value_t = 10240)]
    size: usize,
    #[arg(long, default_value = "load@client.perf.test")]
    from: String,
    #[arg(long, default_value = "user@sink.perf.test")]
    rcpt: String,
    /// X-Perf-Run header value, so the sink counts this run's messages.
    #[arg(long, default_value = "run")]
    run: String,
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Accepted for symmetry with loadgen (output is always JSON).
    #[arg(long)]
    json: bool,
}

const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The loadgen mix as JSON parts: ~30% prose text, ~40% random attachment (base64 in JSON).
fn body_parts(a: &Args) -> (String, String) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: &[&str] = &[
        "appointment",
        "schedule",
        "clinic",
        "follow-up",
        "review",
        "the",
        "and",
        "results",
        "please",
        "call",
        "office",
        "next",
        "week",
        "report",
        "attached",
        "thank",
        "you",
        "for",
        "your",
        "visit",
        "team",
        "update",
        "regards",
        "reminder",
    ];
    let budget = a.size.saturating_sub(1100).max(300);
    let mut text = String::new();
    while text.len() < budget * 6 / 10 {
        let start = text.len();
        while text.len() - start < 64 {
            text.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
            text.push(' ');
        }
        text.push('\n');
    }
    let raw: Vec<u8> = (0..budget * 4 / 10 * 3 / 4).map(|_| next() as u8).collect();
    (text, base64::engine::general_purpose::STANDARD.encode(raw))
}

#[derive(Default)]
struct Stats {
    accept_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Stats {
    fn error(&mut self, kind: String, detail: String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(detail);
        }
    }
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

struct Ctx {
    args: Args,
    client: Client<Https, Full<Bytes>>,
    uri: hyper::Uri,
    auth: String,
    text: String,
    attach: String,
    next: AtomicUsize,
    deadline: Instant,
}

async fn worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::default();
    loop {
        let n = ctx.next.fetch_add(1, Ordering::Relaxed);
        if n >= ctx.args.messages || Instant::now() >= ctx.deadline {
            break;
        }
        let body = serde_json::json!({
            "from": ctx.args.from, "to": [ctx.args.rcpt],
            "subject": format!("Clinic update {n:010}"), "text": ctx.text,
            "headers": {"X-Perf-Run": ctx.args.run, "X-Perf-Sent": format!("{:.6}", epoch_secs())},
            "attachments": [{"filename": "summary.pdf", "content_type": "application/pdf",
                             "content_base64": ctx.attach}],
        });
        let req = hyper::Request::post(ctx.uri.clone())
            .header("authorization", &ctx.auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                st.error("request".into(), e.to_string());
                continue;
            }
        };
        let t0 = Instant::now();
        let res = tokio::time::timeout(STEP_TIMEOUT, async {
            let resp = ctx
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        })
        .await;
        match res {
            Ok(Ok((202, _))) => st
                .accept_us
                .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
            // Problem documents carry no content (phigate's contract), so printing is safe.
            Ok(Ok((code, b))) => st.error(
                format!("http_{code}"),
                format!("{code}: {}", String::from_utf8_lossy(&b)),
            ),
            Ok(Err(e)) => st.error("transport".into(), e),
            Err(_) => st.error("timeout".into(), "request exceeded 60 s".into()),
        }
    }
    st
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let mut roots = RootCertStore::empty();
    for c in phigate::tls::server::load_certs(&args.ca_file).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.sessions)
        .build(https);
    let port = args.target.rsplit(':').next().unwrap_or("443");
    let uri: hyper::Uri = format!("https://{}:{port}/v1/messages", args.sni)
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let key = std::fs::read_to_string(&args.key_file).map_err(|e| format!("key file: {e}"))?;
    let auth = format!("Bearer {}", key.lines().next().unwrap_or("").trim());
    let (text, attach) = body_parts(&args);
    let message_bytes = text.len() + attach.len();
    let ctx = Arc::new(Ctx {
        deadline: Instant::now() + Duration::from_secs(args.timeout),
        args,
        client,
        uri,
        auth,
        text,
        attach,
        next: AtomicUsize::new(0),
    });
    let start_epoch = epoch_secs();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctx.args.sessions {
        tasks.spawn(worker(ctx.clone()));
    }
    let mut all = Stats::default();
    while let Some(r) = tasks.join_next().await {
        let w = r.map_err(|e| e.to_string())?;
        all.accept_us.extend(w.accept_us);
        for (k, v) in w.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.first_error = all.first_error.or(w.first_error);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.accept_us.sort_unstable();
    let ok = all.accept_us.len();
    let a = &ctx.args;
    let lat = serde_json::json!({"p50": pct(&all.accept_us, 0.5), "p99": pct(&all.accept_us, 0.99),
                                 "max": pct(&all.accept_us, 1.0)});
    Ok(serde_json::json!({
        "target": a.target, "tls": "https", "run": a.run,
        "sessions": a.sessions, "messages": a.messages, "size": a.size, "message_bytes": message_bytes,
        "accepted": ok, "errors": all.errors.values().sum::<u64>(), "error_stages": all.errors,
        "first_error": all.first_error,
        "start_epoch": start_epoch, "end_epoch": start_epoch + elapsed, "elapsed_s": elapsed,
        "accept_msgs_per_s": if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
        // One request is the whole submission: request sent -> 202 is both figures.
        "commit_ms": lat, "accept_ms": lat,
    }))
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apiload: runtime: {e}");
            std::process::exit(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("apiload: {e}");
            std::process::exit(2);
        }
    }
}
