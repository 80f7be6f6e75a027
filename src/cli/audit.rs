//! `phigate audit verify|export`: check and export the audit trail.
//!
//! With the daemon running they go through its control socket (it owns the spool);
//! with it stopped they open the spool directly. Exports are recorded in the trail.

use super::CliError;
use crate::audit::{self, Audit, AuditEvent, AuditSettings, ExportFilter, Format, Kind};
use crate::config::Config;
use crate::spool::{Spool, SpoolError};
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Walk the chain; report the first broken, missing, reordered or altered record.
    Verify {
        /// A head copied from outside the store (the system log), as SEQ:HASH.
        #[arg(long)]
        head: Option<String>,
    },
    /// Stream records as JSON lines or CSV to stdout.
    Export {
        /// From this time (RFC 3339 or unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339 or unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// Only records of this message ID.
        #[arg(long)]
        message: Option<String>,
        /// Only records naming this address.
        #[arg(long)]
        recipient: Option<String>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Incident report: one row per message and recipient with TLS evidence, from the
    /// verified audit trail alone (works after content was shredded; audited).
    Incident(super::freeze::IncidentArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

const LOCKED: &str = "the daemon holds the spool; run this through it or stop it";

pub(super) fn open_spool(config: &Path) -> Result<(Config, Arc<Spool>), CliError> {
    let cfg = Config::load(config)?;
    let ring = crate::server::load_keyring(&cfg)?;
    let dir = cfg.server.data_dir.join("spool");
    if !dir.exists() {
        return Err(CliError::Usage(format!(
            "{}: no spool here yet",
            dir.display()
        )));
    }
    match Spool::open(&dir, ring) {
        Ok(s) => Ok((cfg, Arc::new(s))),
        Err(SpoolError::Io(e)) if e.to_string().contains("could not acquire lock") => {
            Err(CliError::Usage(LOCKED.into()))
        }
        Err(e) => Err(CliError::Usage(e.to_string())),
    }
}

/// Unix milliseconds from RFC 3339 or unix seconds.
pub(super) fn parse_time(s: &str) -> Result<u64, CliError> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| CliError::Usage(format!("`{s}`: expected RFC 3339 time or unix seconds")))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| CliError::Usage(format!("`{s}`: before 1970")))
}

fn parse_head(s: &str) -> Result<(u64, [u8; 32]), CliError> {
    let bad = || CliError::Usage(format!("--head `{s}`: expected SEQ:HASH (64 hex digits)"));
    let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    let hash = audit::record::parse_hash(hash).ok_or_else(bad)?;
    Ok((seq, hash))
}

pub(super) fn admin_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// The running daemon's config when its control socket answers, else `None` (then the
/// spool is opened directly).
pub(super) fn daemon(config: &Path) -> Result<Option<Config>, CliError> {
    let cfg = super::control_client::load_config(config)?;
    let Some(sock) = &cfg.server.control_socket else {
        return Ok(None);
    };
    Ok(std::os::unix::net::UnixStream::connect(sock)
        .is_ok()
        .then_some(cfg))
}

fn via_daemon(config: &Path, action: &AuditAction) -> Result<bool, CliError> {
    use crate::control::{Count, Request};
    let Some(cfg) = daemon(config)? else {
        return Ok(false);
    };
    match action {
        // Handled by `run` before this.
        AuditAction::Incident(_) => return Ok(false),
        AuditAction::Verify { head } => {
            let head = head
                .as_deref()
                .map(|h| parse_head(h).map(|(seq, hash)| (seq, hex::encode(hash))))
                .transpose()?;
            let report: String = super::control_client::call(&cfg, &Request::AuditVerify { head })?;
            println!("{report}");
        }
        AuditAction::Export {
            since,
            until,
            message,
            recipient,
            format,
        } => {
            let req = Request::AuditExport {
                since_ms: since.as_deref().map(parse_time).transpose()?,
                until_ms: until.as_deref().map(parse_time).transpose()?,
                message: message.clone(),
                recipient: recipient.clone(),
                csv: matches!(format, ExportFormat::Csv),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            let mut failed = None;
            let _: Count = super::control_client::call_stream(&cfg, &req, |line| {
                if failed.is_none() {
                    if let Err(e) = writeln!(out, "{line}") {
                        failed = Some(e);
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
    }
    Ok(true)
}

pub fn run(config: &Path, action: &AuditAction) -> Result<(), CliError> {
    if let AuditAction::Incident(args) = action {
        return super::freeze::run_incident(config, args);
    }
    if via_daemon(config, action)? {
        return Ok(());
    }
    match action {
        AuditAction::Incident(args) => super::freeze::run_incident(config, args),
        AuditAction::Verify { head } => {
            let external = head.as_deref().map(parse_head).transpose()?;
            let (_, spool) = open_spool(config)?;
            match audit::verify(spool.store().as_ref(), &spool.keyring(), external) {
                Ok(r) => {
                    println!("{r}");
                    Ok(())
                }
                Err(b) => Err(CliError::Usage(format!("audit verify FAILED: {b}"))),
            }
        }
        AuditAction::Export {
            since,
            until,
            message,
            recipient,
            format,
        } => {
            let filter = ExportFilter {
                since_ms: since.as_deref().map(parse_time).transpose()?,
                until_ms: until.as_deref().map(parse_time).transpose()?,
                message: message.clone(),
                recipient: recipient.clone(),
            };
            let fmt = match format {
                ExportFormat::Jsonl => Format::Jsonl,
                ExportFormat::Csv => Format::Csv,
            };
            let (cfg, spool) = open_spool(config)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            let n = audit::export(
                spool.store().as_ref(),
                &spool.keyring(),
                &filter,
                fmt,
                &mut out,
            )
            .map_err(|e| CliError::Usage(e.to_string()))?;
            drop(out);
            // The export itself goes into the trail: who, which filter, how many.
            let settings = AuditSettings {
                hostname: cfg.server.hostname.clone(),
                ..AuditSettings::default()
            };
            let trail = Audit::open(spool, settings).map_err(|e| CliError::Usage(e.to_string()))?;
            let mut ev = AuditEvent::new(Kind::Export)
                .field("records", n)
                .field("since", since.clone())
                .field("until", until.clone())
                .field("message", message.clone())
                .field("format", format!("{format:?}").to_ascii_lowercase())
                .person("admin", admin_name());
            if let Some(r) = recipient {
                ev = ev.person("recipient_filter", r.as_str());
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(trail.record(vec![ev]))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            eprintln!("exported {n} records");
            Ok(())
        }
    }
}
