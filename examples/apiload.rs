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

use clap::Parser;
use common::https::{self, HttpsClient};
use common::{epoch_secs, micros_since, pct};
use http_body_util::Full;
use hyper::body::Bytes;
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

struct Ctx {
    args: Args,
    client: HttpsClient,
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
        match https::send(&ctx.client, req, STEP_TIMEOUT).await {
            Ok((202, _, _)) => st.accept_us.push(micros_since(t0)),
            // Problem documents carry no content (phigate's contract), so printing is safe.
            Ok((code, _, b)) => st.error(
                format!("http_{code}"),
                format!("{code}: {}", String::from_utf8_lossy(&b)),
            ),
            Err(e) if e.starts_with("timeout") => st.error("timeout".into(), e),
            Err(e) => st.error("transport".into(), e),
        }
    }
    st
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let client = https::client(&args.ca_file, args.sessions)?;
    let port = args.target.rsplit(':').next().unwrap_or("443");
    let uri: hyper::Uri = format!("https://{}:{port}/v1/messages", args.sni)
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let auth = https::bearer(&args.key_file)?;
    let (text, attach) = https::body_parts(args.size);
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
