//! SMTP TLS Reporting (RFC 8460): the daily reports phigate sends to recipient domains
//! that publish `_smtp._tls` TXT with a `rua`.
//!
//! Delivery tells the [`Aggregator`] (a [`TlsObserver`]) the TLS result of every new MX
//! connection; it counts them per domain and UTC day in the spool's store (`Tree::Meta`,
//! keys `tlsrpt/agg/<day>/<domain>`, clear: names, addresses and counts only, never a
//! recipient or content), so the counts survive restarts. [`TlsRpt`] sends each finished
//! day once, after `send_hour`, or everything now (`phigate tlsrpt send-now`): gzipped
//! JSON by HTTPS POST, or mail queued like a DSN (and DKIM-signed by the outbound
//! transport). Report mail carries [`REPORT_LISTENER`], so its deliveries are never
//! counted. Domains are looked up only at send time, so the delivery path does no DNS.

pub mod aggregate;
pub mod report;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsRptSettings;
use crate::delivery::observe::{TlsAttempt, TlsObserver, REPORT_LISTENER};
use crate::dns::Resolver;
use crate::queue::Queue;
use crate::services::{Clock, Services};
use crate::spool::{Op, RecipientState, Store, Tree};
use crate::tls::https::{HttpsClient, Resolve};
use crate::tls::rpt::{self, Rua};
use crate::types::{Envelope, MessageId};
use aggregate::Aggregate;

const AGG_PREFIX: &str = "tlsrpt/agg/";
const SENT_PREFIX: &str = "tlsrpt/sent/";
/// A day's report that could not be sent (DNS or every rua failing) is retried at each
/// run and dropped once this old.
const KEEP_UNSENT_DAYS: u64 = 3;
const POST_TIMEOUT: Duration = Duration::from_secs(30);
const CHECK_EVERY: Duration = Duration::from_secs(300);
const DAY: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TlsRptError {
    #[error("TLS-RPT store: {0}")]
    Store(#[from] std::io::Error),
    #[error("TLS-RPT: {0}")]
    Queue(#[from] crate::spool::SpoolError),
}

fn day_of(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn midnight(secs: u64) -> u64 {
    secs - secs % DAY
}

fn agg_key(day: &str, domain: &str) -> Vec<u8> {
    format!("{AGG_PREFIX}{day}/{domain}").into_bytes()
}

/// Counts delivery's TLS results in the store.
pub struct Aggregator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Serialises read-modify-write of the records.
    lock: Mutex<()>,
}

impl Aggregator {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Aggregator {
            store,
            clock,
            lock: Mutex::new(()),
        })
    }

    fn record(&self, a: &TlsAttempt<'_>) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now_secs();
        let day = day_of(now);
        let key = agg_key(&day, a.domain);
        let mut agg = match self.store.get(Tree::Meta, &key)? {
            Some(v) => serde_json::from_slice(&v).unwrap_or_default(),
            None => None,
        }
        .unwrap_or_else(|| {
            let sent = self
                .store
                .get(Tree::Meta, format!("{SENT_PREFIX}{}", a.domain).as_bytes())
                .ok()
                .flatten()
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            Aggregate::new(a.domain, &day, midnight(now).max(sent))
        });
        agg.add(a);
        let value = serde_json::to_vec(&agg).map_err(std::io::Error::other)?;
        // Not flushed here: sled flushes within a second, and losing the last counts in
        // a crash is acceptable for an aggregate report.
        self.store.commit(&[Op::Put(Tree::Meta, key, value)])
    }

    /// Every stored aggregate, oldest day first.
    pub fn all(&self) -> std::io::Result<Vec<Aggregate>> {
        let mut out = Vec::new();
        let end = format!("{}0", AGG_PREFIX.trim_end_matches('/'));
        self.store.scan(
            Tree::Meta,
            AGG_PREFIX.as_bytes(),
            Some(end.as_bytes()),
            &mut |_, v| {
                if let Ok(a) = serde_json::from_slice::<Aggregate>(v) {
                    out.push(a);
                }
                true
            },
        )?;
        Ok(out)
    }

    /// Takes `agg`'s record out of the store to report it: what it holds now (counted up
    /// to this moment). When its window ends now (send-now), results from here on start
    /// the next window at `end`, so nothing counted during the send is lost.
    fn take(&self, agg: &Aggregate, end: Option<u64>) -> std::io::Result<Option<Aggregate>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = agg_key(&agg.day, &agg.domain);
        let current = self
            .store
            .get(Tree::Meta, &key)?
            .and_then(|v| serde_json::from_slice::<Aggregate>(&v).ok());
        let mut ops = vec![Op::Delete(Tree::Meta, key)];
        if let Some(end) = end {
            ops.push(Op::Put(
                Tree::Meta,
                format!("{SENT_PREFIX}{}", agg.domain).into_bytes(),
                end.to_be_bytes().to_vec(),
            ));
        }
        self.store.commit(&ops)?;
        Ok(current)
    }

    /// Puts back a report that could not be sent, merged with anything counted since.
    fn restore(&self, agg: &Aggregate) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = agg_key(&agg.day, &agg.domain);
        let mut back = agg.clone();
        if let Some(newer) = self
            .store
            .get(Tree::Meta, &key)?
            .and_then(|v| serde_json::from_slice::<Aggregate>(&v).ok())
        {
            back.merge(&newer);
        }
        let value = serde_json::to_vec(&back).map_err(std::io::Error::other)?;
        self.store.commit(&[Op::Put(Tree::Meta, key, value)])
    }

    /// Makes taken and restored records durable.
    fn flush(&self) -> std::io::Result<()> {
        self.store.flush()
    }
}

impl TlsObserver for Aggregator {
    fn observe(&self, attempt: &TlsAttempt<'_>) {
        if let Err(e) = self.record(attempt) {
            warn!(error = %e, "TLS-RPT result not recorded");
        }
    }
}

/// `phigate tlsrpt show`: one row per domain and day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShowRow {
    pub domain: String,
    pub day: String,
    pub start: u64,
    pub successes: u64,
    pub failures: u64,
    /// True when the day is over (sent at the next run after `send_hour`).
    pub pending: bool,
    pub aggregate: Aggregate,
}

/// What one send did for one domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentRow {
    pub domain: String,
    pub day: String,
    pub report_id: Option<String>,
    /// rua URIs that took the report (mailto: queued).
    pub delivered: Vec<String>,
    pub errors: Vec<String>,
    /// `sent`, `no-record` (the domain asks for no reports; dropped), `retry`, `dropped`.
    pub outcome: String,
}

pub struct TlsRpt {
    agg: Arc<Aggregator>,
    settings: TlsRptSettings,
    hostname: String,
    resolver: Arc<dyn Resolver>,
    http: HttpsClient,
    services: Services,
    queue: Arc<Queue>,
    /// One send at a time (the daily run and `send-now`).
    sending: tokio::sync::Mutex<()>,
}

impl TlsRpt {
    pub fn new(
        agg: Arc<Aggregator>,
        settings: TlsRptSettings,
        hostname: &str,
        resolver: Arc<dyn Resolver>,
        tls: Arc<rustls::ClientConfig>,
        services: Services,
        queue: Arc<Queue>,
    ) -> Arc<Self> {
        let r = resolver.clone();
        // Report hosts are resolved with phigate's own resolver, like MTA-STS hosts.
        let resolve = Resolve::With(Arc::new(move |host: String| {
            let r = r.clone();
            Box::pin(async move {
                r.ip(&host)
                    .await
                    .map(|a| a.records)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        }));
        Arc::new(TlsRpt {
            agg,
            settings,
            hostname: hostname.to_string(),
            resolver,
            http: HttpsClient::new(tls, resolve, false, POST_TIMEOUT),
            services,
            queue,
            sending: tokio::sync::Mutex::new(()),
        })
    }

    pub fn show(&self) -> Result<Vec<ShowRow>, TlsRptError> {
        let today = day_of(self.services.now());
        Ok(self
            .agg
            .all()?
            .into_iter()
            .map(|a| ShowRow {
                domain: a.domain.clone(),
                day: a.day.clone(),
                start: a.start,
                successes: a.successes(),
                failures: a.failures(),
                pending: a.day < today,
                aggregate: a,
            })
            .collect())
    }

    /// Sends the finished days' reports; with `all`, today's so far too (its window then
    /// ends now and the next one starts here).
    pub async fn send(&self, all: bool) -> Result<Vec<SentRow>, TlsRptError> {
        let _one = self.sending.lock().await;
        let now = self.services.now();
        let today = day_of(now);
        let mut rows = Vec::new();
        for agg in self.agg.all()? {
            let finished = agg.day < today;
            if !finished && !all {
                continue;
            }
            let end = if finished {
                midnight(agg.start) + DAY
            } else {
                now
            };
            let Some(agg) = self.agg.take(&agg, (!finished).then_some(end))? else {
                continue;
            };
            let row = self.send_one(&agg, end, now).await;
            if row.outcome == "retry" {
                self.agg.restore(&agg)?;
            }
            self.agg.flush()?;
            info!(
                domain = %row.domain, day = %row.day, outcome = %row.outcome,
                delivered = row.delivered.len(), errors = row.errors.len(),
                "TLS-RPT report"
            );
            rows.push(row);
        }
        Ok(rows)
    }

    async fn send_one(&self, agg: &Aggregate, end: u64, now: u64) -> SentRow {
        let mut row = SentRow {
            domain: agg.domain.clone(),
            day: agg.day.clone(),
            report_id: None,
            delivered: Vec::new(),
            errors: Vec::new(),
            outcome: "retry".into(),
        };
        let too_old = now.saturating_sub(agg.start) > KEEP_UNSENT_DAYS * DAY;
        let give_up = |mut row: SentRow, why: String| {
            row.errors.push(why);
            row.outcome = if too_old { "dropped" } else { "retry" }.into();
            row
        };
        let record = match self.resolver.txt(&rpt::record_name(&agg.domain)).await {
            Ok(a) => rpt::find_record(&a.records).map(rpt::parse_record),
            // Temporary or bogus: try again at the next run.
            Err(e) => return give_up(row, e.to_string()),
        };
        let record = match record {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                row.errors.push(e.to_string());
                row.outcome = "no-record".into();
                return row;
            }
            None => {
                row.outcome = "no-record".into();
                return row;
            }
        };
        let id = format!("{}.{}", MessageId::new(), self.hostname);
        let report = report::build(agg, end, &id, &self.settings);
        let gz = match report::gzip(&report) {
            Ok(g) => g,
            Err(e) => return give_up(row, format!("gzip: {e}")),
        };
        row.report_id = Some(id.clone());
        for rua in &record.rua {
            let res = match rua {
                Rua::Https(url) => self.post(url, gz.clone()).await.map(|()| url.clone()),
                Rua::Mailto(to) => self
                    .mail(agg, to, &id, end, gz.clone())
                    .await
                    .map(|()| format!("mailto:{to}")),
            };
            match res {
                Ok(done) => row.delivered.push(done),
                Err(e) => row.errors.push(e),
            }
        }
        if row.delivered.is_empty() {
            return give_up(row, "no rua took the report".into());
        }
        row.outcome = "sent".into();
        row
    }

    async fn post(&self, url: &str, gz: Vec<u8>) -> Result<(), String> {
        let req = hyper::Request::post(url)
            .header(hyper::header::USER_AGENT, "phigate")
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(Full::new(Bytes::from(gz)))
            .map_err(|e| format!("{url}: {e}"))?;
        match self.http.send(req, 64 * 1024).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("{url}: HTTP {}", r.status)),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    /// Queues the report mail; the queue delivers (and DKIM-signs) it like any message.
    async fn mail(
        &self,
        agg: &Aggregate,
        to: &str,
        id: &str,
        end: u64,
        gz: Vec<u8>,
    ) -> Result<(), String> {
        let m = report::MailReport {
            domain: &agg.domain,
            to,
            report_id: id,
            hostname: &self.hostname,
            start: agg.start,
            end,
        };
        let content =
            report::mail(&m, &self.settings, gz).map_err(|e| format!("mailto:{to}: {e}"))?;
        let now = self.services.now();
        let env = Envelope::internal(
            &self.settings.from,
            to,
            &self.hostname,
            REPORT_LISTENER,
            now,
        );
        self.services
            .spool
            .enqueue(
                MessageId::new(),
                &env,
                &content,
                RecipientState::queued(now),
            )
            .await
            .map_err(|e| format!("mailto:{to}: {e}"))?;
        self.queue.wake();
        Ok(())
    }

    /// Sends the finished days once the UTC hour reaches `send_hour`, checking every few
    /// minutes, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let hour = (self.services.now() % DAY) / 3600;
            if hour >= u64::from(self.settings.send_hour) {
                if let Err(e) = self.send(false).await {
                    warn!(error = %e, "TLS-RPT reports not sent");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::observe::TlsPolicy;
    use crate::spool::SledStore;
    use crate::tls::rpt::ResultType;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct At(AtomicU64);
    impl Clock for At {
        fn now_secs(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn attempt<'a>(policy: &'a TlsPolicy, failure: Option<ResultType>) -> TlsAttempt<'a> {
        TlsAttempt {
            domain: "example.org",
            policy,
            mx_host: "mx.example.org",
            receiving_ip: Some([192, 0, 2, 1].into()),
            sending_ip: None,
            failure,
        }
    }

    #[test]
    fn per_day_records_survive_reopen_and_send_now_moves_the_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day1 = 1_796_256_000 + 3600; // 2026-12-03T01:00Z
        let clock = Arc::new(At(AtomicU64::new(day1)));
        let none = TlsPolicy::none();
        {
            let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
            let agg = Aggregator::new(store.clone(), clock.clone());
            agg.observe(&attempt(&none, None));
            agg.observe(&attempt(&none, Some(ResultType::CertificateExpired)));
            clock.0.store(day1 + DAY, Ordering::SeqCst);
            agg.observe(&attempt(&none, None));
            store.flush().expect("flush");
        }
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("reopen"));
        let agg = Aggregator::new(store, clock.clone());
        let all = agg.all().expect("all");
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(
            (all[0].day.as_str(), all[0].start, all[0].failures()),
            ("2026-12-03", 1_796_256_000, 1)
        );
        assert_eq!((all[1].day.as_str(), all[1].successes()), ("2026-12-04", 1));
        // A report that ends now (send-now): the next window for the domain starts there.
        let now = day1 + DAY + 60;
        let taken = agg.take(&all[1], Some(now)).expect("take").expect("record");
        clock.0.store(now + 5, Ordering::SeqCst);
        agg.observe(&attempt(&none, None));
        let all = agg.all().expect("all");
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].start, all[1].successes()), (now, 1));
        // A report that could not be sent goes back, merged with what came since.
        agg.restore(&taken).expect("restore");
        let all = agg.all().expect("all");
        assert_eq!((all[1].start, all[1].successes()), (taken.start, 2));
        // Only names, addresses and counts are stored.
        let text = serde_json::to_string(&all).expect("json");
        assert!(text.contains("mx.example.org") && text.contains("192.0.2.1"));
    }
}
