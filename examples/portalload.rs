//! Secure-portal benchmark for `bench/compare.sh --portal`. Against a phigate with a
//! `[portal]`, sandbox delivery and the HTTPS API:
//!
//! 1. `--sessions` keep-alive clients submit `--messages` messages through the API with
//!    `"portal": "always"`, one recipient each; notifications per second = notice `.eml`
//!    files in `--sandbox-dir`, from the first submit to the last notice written.
//! 2. For `--samples` links from those notices, `--flows` concurrent recipients each on
//!    one keep-alive HTTPS connection: GET the landing page, POST `code` (its `csrf`),
//!    wait for the code mail in the sandbox directory, POST `verify`, GET `view` with the
//!    session cookie; then `--gets` more landing and view GETs. Latency p50/p99/max of each
//!    step and of the whole flow (first GET to the message page).
//!
//! Prints one JSON object.
//!
//! ```text
//! cargo run --release --example portalload -- --api 127.0.0.1:12443 --ca-file ca.pem \
//!     --key-file data/sandbox-api-key --sandbox-dir data/sandbox --messages 500 --samples 100
//! ```

#[allow(dead_code)]
mod common;

use clap::Parser;
use common::https::{self, HttpsClient};
use common::{epoch_secs, micros_since, pct};
use http_body_util::Full;
use hyper::body::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

#[derive(Parser, Debug)]
#[command(about = "Secure portal benchmark: notifications/s and pickup-page latency")]
struct Args {
    /// host:port of phigate's `[api] listen`.
    #[arg(long)]
    api: String,
    /// Name in the API URL (SNI and certificate check).
    #[arg(long, default_value = "127.0.0.1")]
    sni: String,
    #[arg(long)]
    ca_file: PathBuf,
    /// File holding the API key (first line), e.g. `data_dir/sandbox-api-key`.
    #[arg(long)]
    key_file: PathBuf,
    /// `data_dir/sandbox`, where sandbox delivery writes `<id>.eml`.
    #[arg(long)]
    sandbox_dir: PathBuf,
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Concurrent API clients in the submit phase.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Links put through the whole pickup flow.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Concurrent recipients in the pickup phase (one keep-alive connection each).
    #[arg(long, default_value_t = 4)]
    flows: usize,
    /// Extra landing and view GETs per link after its flow (more latency samples).
    #[arg(long, default_value_t = 4)]
    gets: usize,
    #[arg(long, default_value_t = 4096)]
    size: usize,
    #[arg(long, default_value = "clinic@client.perf.test")]
    from: String,
    #[arg(long, default_value = "portal.perf.test")]
    rcpt_domain: String,
    /// How often the sandbox directory is listed.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    #[arg(long, default_value = "portal")]
    run: String,
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Errors {
    by_kind: BTreeMap<String, u64>,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, kind: &str, detail: String) {
        *self.by_kind.entry(kind.to_string()).or_default() += 1;
        if self.first.is_none() {
            self.first = Some(detail);
        }
    }
    fn merge(&mut self, o: Errors) {
        for (k, v) in o.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        self.first = self.first.take().or(o.first);
    }
    fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

// ------------------------------------------------------------------ the sandbox directory

/// A notice for one of this run's recipients.
struct NoticeMail {
    to: String,
    link: String,
    written: SystemTime,
}

/// Code waiters by recipient address, filled by the directory watcher.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>;

fn text_of(raw: &[u8]) -> Option<(String, String)> {
    let m = mail_parser::MessageParser::default().parse(raw)?;
    let to = m.to()?.first()?.address()?.to_ascii_lowercase();
    Some((to, m.body_text(0)?.to_string()))
}

/// List `dir` every `poll` until `stop`: notices (a `https://…/m/…` link) of this run's
/// recipients go to `notices`, code mails (`Code: NNNNNN`) to their waiter.
fn watch(
    dir: PathBuf,
    tag: String,
    poll: Duration,
    notices: mpsc::UnboundedSender<NoticeMail>,
    waiters: Waiters,
    stop: Arc<AtomicBool>,
) {
    let mut seen: HashSet<std::ffi::OsString> = HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for ent in rd.flatten() {
                let name = ent.file_name();
                if Path::new(&name).extension().is_none_or(|e| e != "eml") || seen.contains(&name) {
                    continue;
                }
                seen.insert(name);
                let path = ent.path();
                let Ok(raw) = std::fs::read(&path) else {
                    continue;
                };
                let Some((to, text)) = text_of(&raw) else {
                    continue;
                };
                if !to.contains(&tag) {
                    continue;
                }
                let link = text
                    .split_whitespace()
                    .find(|w| w.starts_with("https://") && w.contains("/m/"));
                if let Some(link) = link {
                    let written = ent
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or_else(|_| SystemTime::now());
                    let link = link.to_string();
                    let _ = notices.send(NoticeMail { to, link, written });
                } else if let Some(code) = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Code: "))
                    .map(|c| c.trim().to_string())
                {
                    let w = waiters
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&to);
                    if let Some(w) = w {
                        let _ = w.send(code);
                    }
                }
            }
        }
        std::thread::sleep(poll);
    }
}

// ------------------------------------------------------------------ phase 1: submit

struct Submit {
    args: Args,
    client: HttpsClient,
    uri: hyper::Uri,
    auth: String,
    text: String,
    attach: String,
    tag: String,
    next: AtomicUsize,
    deadline: Instant,
}

fn rcpt(tag: &str, n: usize, domain: &str) -> String {
    format!("pickup{n:06}.{tag}@{domain}")
}

async fn submitter(ctx: Arc<Submit>) -> (Vec<u32>, Errors) {
    let (mut lat, mut err) = (Vec::new(), Errors::default());
    loop {
        let n = ctx.next.fetch_add(1, Ordering::Relaxed);
        if n >= ctx.args.messages || Instant::now() >= ctx.deadline {
            break;
        }
        let body = serde_json::json!({
            "from": ctx.args.from, "to": [rcpt(&ctx.tag, n, &ctx.args.rcpt_domain)],
            "subject": format!("Lab results {n:06}"), "text": ctx.text, "portal": "always",
            "headers": {"X-Perf-Run": ctx.args.run},
            "attachments": [{"filename": "results.pdf", "content_type": "application/pdf",
                             "content_base64": ctx.attach}],
        });
        let req = hyper::Request::post(ctx.uri.clone())
            .header("authorization", &ctx.auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else {
            err.add("request", "request build".into());
            continue;
        };
        let t0 = Instant::now();
        match https::send(&ctx.client, req, STEP_TIMEOUT).await {
            Ok((202, _, _)) => lat.push(micros_since(t0)),
            Ok((code, _, b)) => err.add(
                &format!("submit_http_{code}"),
                format!("submit {code}: {}", String::from_utf8_lossy(&b)),
            ),
            Err(e) => err.add("submit_transport", e),
        }
    }
    (lat, err)
}

// ------------------------------------------------------------------ phase 2: pick up

#[derive(Default)]
struct Flow {
    landing_us: Vec<u32>,
    code_us: Vec<u32>,
    code_mail_us: Vec<u32>,
    verify_us: Vec<u32>,
    view_us: Vec<u32>,
    flow_us: Vec<u32>,
    done: usize,
    errors: Errors,
}

impl Flow {
    fn merge(&mut self, o: Flow) {
        self.landing_us.extend(o.landing_us);
        self.code_us.extend(o.code_us);
        self.code_mail_us.extend(o.code_mail_us);
        self.verify_us.extend(o.verify_us);
        self.view_us.extend(o.view_us);
        self.flow_us.extend(o.flow_us);
        self.done += o.done;
        self.errors.merge(o.errors);
    }
}

fn get(uri: &str, cookie: Option<&str>) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut b = hyper::Request::get(uri);
    if let Some(c) = cookie {
        b = b.header("cookie", format!("phigate_portal={c}"));
    }
    b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())
}

fn post_form(uri: &str, fields: &[(&str, &str)]) -> Result<hyper::Request<Full<Bytes>>, String> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    hyper::Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

/// One timed request that must answer `want`.
async fn step(
    client: &HttpsClient,
    req: Result<hyper::Request<Full<Bytes>>, String>,
    want: u16,
    what: &str,
    samples: &mut Vec<u32>,
) -> Result<(hyper::HeaderMap, Bytes), (String, String)> {
    let req = req.map_err(|e| (format!("{what}_request"), e))?;
    let t0 = Instant::now();
    match https::send(client, req, STEP_TIMEOUT).await {
        Ok((s, h, b)) if s == want => {
            samples.push(micros_since(t0));
            Ok((h, b))
        }
        Ok((s, _, _)) => Err((format!("{what}_http_{s}"), format!("{what}: HTTP {s}"))),
        Err(e) => Err((format!("{what}_transport"), format!("{what}: {e}"))),
    }
}

fn csrf_of(page: &[u8]) -> Option<String> {
    let page = std::str::from_utf8(page).ok()?;
    let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_string())
}

fn session_cookie(h: &hyper::HeaderMap) -> Option<String> {
    h.get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("phigate_portal="))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// The whole flow for one link; samples go into `f`.
async fn pickup(
    client: &HttpsClient,
    n: &NoticeMail,
    waiters: &Waiters,
    gets: usize,
    f: &mut Flow,
) -> Result<(), (String, String)> {
    let t_flow = Instant::now();
    let link = n.link.as_str();
    let (_, page) = step(client, get(link, None), 200, "landing", &mut f.landing_us).await?;
    let csrf = csrf_of(&page).ok_or(("landing_csrf".into(), "no csrf field".into()))?;
    let (tx, rx) = oneshot::channel();
    waiters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(n.to.clone(), tx);
    let code_uri = format!("{link}/code");
    let t_code = Instant::now();
    step(
        client,
        post_form(&code_uri, &[("csrf", &csrf)]),
        200,
        "code",
        &mut f.code_us,
    )
    .await?;
    let code = match tokio::time::timeout(STEP_TIMEOUT, rx).await {
        Ok(Ok(c)) => c,
        _ => {
            return Err((
                "code_mail_timeout".into(),
                format!("no code mail for {}", n.to),
            ))
        }
    };
    f.code_mail_us.push(micros_since(t_code));
    let verify_uri = format!("{link}/verify");
    let (h, _) = step(
        client,
        post_form(&verify_uri, &[("csrf", &csrf), ("code", &code)]),
        303,
        "verify",
        &mut f.verify_us,
    )
    .await?;
    let cookie = session_cookie(&h).ok_or(("verify_cookie".into(), "no Set-Cookie".into()))?;
    let view_uri = format!("{link}/view");
    step(
        client,
        get(&view_uri, Some(&cookie)),
        200,
        "view",
        &mut f.view_us,
    )
    .await?;
    f.flow_us.push(micros_since(t_flow));
    for _ in 0..gets {
        step(client, get(link, None), 200, "landing", &mut f.landing_us).await?;
        step(
            client,
            get(&view_uri, Some(&cookie)),
            200,
            "view",
            &mut f.view_us,
        )
        .await?;
    }
    Ok(())
}

async fn recipient(
    client: HttpsClient,
    base: String,
    links: Arc<Mutex<Vec<NoticeMail>>>,
    waiters: Waiters,
    gets: usize,
) -> Flow {
    let mut f = Flow::default();
    // Open the keep-alive connection first, so the timed requests reuse it.
    if let Err((k, e)) = step(
        &client,
        get(&format!("{base}/static/portal.css"), None),
        200,
        "warmup",
        &mut Vec::new(),
    )
    .await
    {
        f.errors.add(&k, e);
        return f;
    }
    loop {
        let n = links.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(n) = n else { break };
        match pickup(&client, &n, &waiters, gets, &mut f).await {
            Ok(()) => f.done += 1,
            Err((k, e)) => f.errors.add(&k, e),
        }
    }
    f
}

fn lat(v: &mut [u32]) -> serde_json::Value {
    v.sort_unstable();
    serde_json::json!({"n": v.len(), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0)})
}

fn secs_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let api = https::client(&args.ca_file, args.sessions)?;
    let port = args.api.rsplit(':').next().unwrap_or("443");
    let uri: hyper::Uri = format!("https://{}:{port}/v1/messages", args.sni)
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let auth = https::bearer(&args.key_file)?;
    let (text, attach) = https::body_parts(args.size);

    let (ntx, mut nrx) = mpsc::unbounded_channel();
    let waiters: Waiters = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dir, tag, w, stop) = (
            args.sandbox_dir.clone(),
            tag.clone(),
            waiters.clone(),
            stop.clone(),
        );
        let poll = Duration::from_millis(args.poll_ms.max(1));
        std::thread::spawn(move || watch(dir, tag, poll, ntx, w, stop))
    };

    // Phase 1: submit, and count notices until every accepted message has one.
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let ctx = Arc::new(Submit {
        args,
        client: api,
        uri,
        auth,
        text,
        attach,
        tag: tag.clone(),
        next: AtomicUsize::new(0),
        deadline,
    });
    let start_epoch = epoch_secs();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctx.args.sessions {
        tasks.spawn(submitter(ctx.clone()));
    }
    let mut submit_us = Vec::new();
    let mut errors = Errors::default();
    while let Some(r) = tasks.join_next().await {
        let (l, e) = r.map_err(|e| e.to_string())?;
        submit_us.extend(l);
        errors.merge(e);
    }
    let submit_s = start.elapsed().as_secs_f64();
    let accepted = submit_us.len();
    let mut notices: Vec<NoticeMail> = Vec::new();
    while notices.len() < accepted {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, nrx.recv()).await {
            Ok(Some(n)) => notices.push(n),
            _ => break,
        }
    }
    if notices.len() < accepted {
        errors.add(
            "notice_missing",
            format!("{} of {accepted} notices", notices.len()),
        );
    }
    let last = notices
        .iter()
        .map(|n| secs_since_epoch(n.written))
        .fold(0.0, f64::max);
    let notice_s = (last - start_epoch).max(1e-6);
    let notified = notices.len();
    let a = &ctx.args;

    // Phase 2: pickup flows over the first `samples` links.
    notices.sort_by(|x, y| x.to.cmp(&y.to));
    notices.truncate(a.samples);
    let sampled = notices.len();
    let base = notices
        .first()
        .and_then(|n| n.link.split("/m/").next())
        .unwrap_or("")
        .to_string();
    let links = Arc::new(Mutex::new(notices));
    let t_pick = Instant::now();
    let mut flows = tokio::task::JoinSet::new();
    for _ in 0..a.flows.max(1) {
        let client = https::client(&a.ca_file, 1)?;
        flows.spawn(recipient(
            client,
            base.clone(),
            links.clone(),
            waiters.clone(),
            a.gets,
        ));
    }
    let mut f = Flow::default();
    while let Some(r) = flows.join_next().await {
        f.merge(r.map_err(|e| e.to_string())?);
    }
    let pick_s = t_pick.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    errors.merge(std::mem::take(&mut f.errors));
    Ok(serde_json::json!({
        "run": a.run, "api": a.api, "portal": base, "messages": a.messages, "sessions": a.sessions,
        "size": a.size, "accepted": accepted, "notified": notified,
        "start_epoch": start_epoch, "submit_s": submit_s,
        "submit_msgs_per_s": accepted as f64 / submit_s.max(1e-6),
        "submit_ms": lat(&mut submit_us),
        "notice_s": notice_s,
        "notices_per_s": if last > 0.0 { notified as f64 / notice_s } else { 0.0 },
        "samples": sampled, "flows": a.flows, "gets": a.gets, "picked_up": f.done,
        "pickup_s": pick_s, "poll_ms": a.poll_ms,
        "landing_ms": lat(&mut f.landing_us), "code_ms": lat(&mut f.code_us),
        "code_mail_ms": lat(&mut f.code_mail_us), "verify_ms": lat(&mut f.verify_us),
        "view_ms": lat(&mut f.view_us), "flow_ms": lat(&mut f.flow_us),
        "errors": errors.total(), "error_stages": errors.by_kind, "first_error": errors.first,
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
            eprintln!("portalload: runtime: {e}");
            std::process::exit(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("portalload: {e}");
            std::process::exit(2);
        }
    }
}
