//! Receiving SMTP server for `bench/compare.sh`: the next hop of the relay under test.
//! It accepts everything, discards message content, and counts messages with first/last
//! arrival times (overall and per `X-Perf-Run` header value).
//!
//! ```text
//! cargo run --release --example sink -- --listen 127.0.0.1:10026 \
//!     --cert sink-chain.pem --key sink.key --stats /tmp/sink.json
//! ```
//!
//! With `--cert/--key` it offers STARTTLS (or, with `--implicit`, speaks TLS from the
//! first byte); without them it is plaintext (the load generator's own ceiling). Stats are
//! written to `--stats` (atomically, via rename) every `--interval-ms` when they changed,
//! and printed as JSON on stdout on SIGUSR1. It exits by itself after `--max-secs`.

#[allow(dead_code)]
mod common;

use clap::Parser;
use common::{epoch_secs, nothing_buffered, read_line, Stream};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Parser, Debug)]
#[command(about = "Counting SMTP sink (loopback benchmarks)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:10026")]
    listen: String,
    /// Certificate chain (PEM); with --key enables STARTTLS.
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// TLS from the first byte instead of STARTTLS.
    #[arg(long)]
    implicit: bool,
    /// JSON stats file, rewritten when the counts change.
    #[arg(long)]
    stats: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Exit after this many seconds (the sink never outlives a benchmark by much).
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

const MAX_LINE: usize = 8192;

#[derive(Default, Clone, Copy)]
struct Span {
    count: u64,
    first: f64,
    last: f64,
}

impl Span {
    fn hit(&mut self, now: f64) {
        if self.count == 0 {
            self.first = now;
        }
        self.count += 1;
        self.last = now;
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"count": self.count, "first": self.first, "last": self.last})
    }
}

#[derive(Default)]
struct Stats {
    all: Span,
    bytes: u64,
    connections: u64,
    tls_resumed: u64,
    runs: HashMap<String, Span>,
}

impl Stats {
    fn json(&self) -> serde_json::Value {
        let runs: serde_json::Map<String, serde_json::Value> = self
            .runs
            .iter()
            .map(|(k, v)| (k.clone(), v.json()))
            .collect();
        serde_json::json!({
            "count": self.all.count, "first": self.all.first, "last": self.all.last,
            "bytes": self.bytes, "connections": self.connections, "tls_resumed": self.tls_resumed,
            "runs": runs,
        })
    }
}

type Shared = Arc<Mutex<Stats>>;
type Conn = BufReader<Stream<TlsStream<TcpStream>>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn verb(line: &[u8]) -> [u8; 4] {
    let mut v = [b' '; 4];
    for (d, s) in v.iter_mut().zip(line.iter()) {
        *d = s.to_ascii_uppercase();
    }
    v
}

/// Reads DATA content up to the lone dot; returns (bytes, X-Perf-Run value if any).
async fn read_data(c: &mut Conn, line: &mut Vec<u8>) -> std::io::Result<(u64, Option<String>)> {
    let (mut bytes, mut run, mut in_headers) = (0u64, None, true);
    loop {
        read_line(c, line, MAX_LINE).await?;
        if line.as_slice() == b".\r\n" || line.as_slice() == b".\n" {
            return Ok((bytes, run));
        }
        bytes += line.len() as u64;
        if in_headers {
            if line.as_slice() == b"\r\n" {
                in_headers = false;
            } else if line.len() > 12 && line[..12].eq_ignore_ascii_case(b"x-perf-run: ") {
                run = Some(String::from_utf8_lossy(&line[12..]).trim().to_string());
            }
        }
    }
}

async fn session(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    implicit: bool,
    stats: Shared,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut c: Conn = match (&tls, implicit) {
        (Some(acc), true) => BufReader::new(Stream::Tls(Box::new(acc.accept(tcp).await?))),
        _ => BufReader::new(Stream::Plain(tcp)),
    };
    let (mut line, mut out) = (Vec::with_capacity(512), Vec::with_capacity(512));
    c.get_mut()
        .write_all(b"220 sink.perf.test ESMTP sink\r\n")
        .await?;
    c.get_mut().flush().await?;
    loop {
        read_line(&mut c, &mut line, MAX_LINE).await?;
        let is_tls = matches!(c.get_ref(), Stream::Tls(_));
        match &verb(&line) {
            b"EHLO" => {
                out.extend_from_slice(b"250-sink.perf.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
                if tls.is_some() && !is_tls {
                    out.extend_from_slice(b"250-STARTTLS\r\n");
                }
                out.extend_from_slice(b"250 SIZE 52428800\r\n");
            }
            b"HELO" => out.extend_from_slice(b"250 sink.perf.test\r\n"),
            b"STAR" if tls.is_some() && !is_tls => {
                c.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                c.get_mut().flush().await?;
                let Stream::Plain(tcp) = c.into_inner() else {
                    return Ok(());
                };
                let Some(acc) = &tls else { return Ok(()) };
                let t = acc.accept(tcp).await?;
                if t.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    lock(&stats).tls_resumed += 1;
                }
                c = BufReader::new(Stream::Tls(Box::new(t)));
                continue;
            }
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => out.extend_from_slice(b"250 2.0.0 ok\r\n"),
            b"DATA" => {
                c.get_mut().write_all(&out).await?;
                out.clear();
                c.get_mut().write_all(b"354 go ahead\r\n").await?;
                c.get_mut().flush().await?;
                let (bytes, run) = read_data(&mut c, &mut line).await?;
                let now = epoch_secs();
                {
                    let mut s = lock(&stats);
                    s.all.hit(now);
                    s.bytes += bytes;
                    if let Some(r) = run {
                        s.runs.entry(r).or_default().hit(now);
                    }
                }
                out.extend_from_slice(b"250 2.0.0 ok: queued\r\n");
            }
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 bye\r\n");
                c.get_mut().write_all(&out).await?;
                c.get_mut().flush().await?;
                let _ = c.get_mut().shutdown().await;
                return Ok(());
            }
            _ => out.extend_from_slice(b"502 5.5.2 not implemented\r\n"),
        }
        // Pipelined commands get their replies in one write.
        if nothing_buffered(&c) {
            c.get_mut().write_all(&out).await?;
            c.get_mut().flush().await?;
            out.clear();
        }
    }
}

fn write_stats(path: &PathBuf, v: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

async fn run(a: Args) -> Result<(), String> {
    let tls = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => {
            let certs = phigate::tls::server::load_certs(cert).map_err(|e| e.to_string())?;
            let key = phigate::tls::server::load_key(key).map_err(|e| e.to_string())?;
            let cfg = ServerConfig::builder_with_provider(phigate::tls::server::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|e| e.to_string())?;
            Some(TlsAcceptor::from(Arc::new(cfg)))
        }
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    let listener = TcpListener::bind(&a.listen)
        .await
        .map_err(|e| format!("{}: {e}", a.listen))?;
    let stats: Shared = Arc::default();
    if let Some(path) = a.stats.clone() {
        let (stats, every) = (stats.clone(), Duration::from_millis(a.interval_ms.max(10)));
        write_stats(&path, &lock(&stats).json());
        tokio::spawn(async move {
            let mut seen = (u64::MAX, u64::MAX);
            loop {
                tokio::time::sleep(every).await;
                let (now, v) = {
                    let s = lock(&stats);
                    ((s.all.count, s.connections), s.json())
                };
                if now != seen {
                    write_stats(&path, &v);
                    seen = now;
                }
            }
        });
    }
    {
        let stats = stats.clone();
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                println!("{}", lock(&stats).json());
            }
        });
    }
    eprintln!(
        "sink listening on {} ({})",
        a.listen,
        match (&tls, a.implicit) {
            (None, _) => "plaintext",
            (Some(_), true) => "implicit TLS",
            (Some(_), false) => "STARTTLS",
        }
    );
    let implicit = a.implicit;
    let stop = tokio::time::sleep(Duration::from_secs(a.max_secs));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            acc = listener.accept() => {
                let Ok((tcp, _)) = acc else { continue };
                lock(&stats).connections += 1;
                let (tls, stats) = (tls.clone(), stats.clone());
                tokio::spawn(async move {
                    let _ = session(tcp, tls, implicit, stats).await;
                });
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sink: runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("sink: {e}");
        std::process::exit(2);
    }
}
