//! Breach response on the command line: `phigate freeze`, `phigate queue hold|release`,
//! bulk `phigate quarantine` selection and `phigate audit incident`. Everything that
//! changes state goes through the daemon's control socket, which records the admin.

use super::control_client::{call, load_config, print_json, when};
use super::queue::parse_id;
use super::CliError;
use crate::audit::incident::{Incident, IncidentFilter};
use crate::control::{BulkAction, Count, Request, Selected};
use crate::freeze::FreezeState;
use clap::{Args, Subcommand, ValueEnum};
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum FreezeAction {
    /// Hold outbound delivery for one identity or everything; new mail is still
    /// accepted, encrypted and held (unless --refuse-inbound).
    On {
        /// The identity string policy rules use, e.g. `password:ehr`.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        identity: Option<String>,
        #[arg(long)]
        all: bool,
        /// Why (recorded, sealed, in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// Also refuse new mail from it (451 4.7.1).
        #[arg(long)]
        refuse_inbound: bool,
    },
    /// Resume delivery: one identity, the global freeze (--all), or (neither) every freeze.
    Off {
        #[arg(long, conflicts_with = "all")]
        identity: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// What is frozen or held.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Which messages `queue hold|release` act on.
#[derive(Args, Debug)]
pub struct HoldArgs {
    #[arg(required_unless_present_any = ["identity", "all"], conflicts_with_all = ["identity", "all"])]
    pub id: Option<String>,
    /// Every pending (hold) or held (release) message of this identity.
    #[arg(long, conflicts_with = "all")]
    pub identity: Option<String>,
    #[arg(long)]
    pub all: bool,
}

/// Bulk selection for `phigate quarantine`.
#[derive(Args, Debug, Default)]
pub struct Selection {
    /// Only messages sent by this identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Received at or after this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Received before this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub until: Option<String>,
}

impl Selection {
    pub fn given(&self) -> bool {
        self.identity.is_some() || self.since.is_some() || self.until.is_some()
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Csv,
    Json,
    Md,
}

/// `phigate audit incident` options.
#[derive(Args, Debug)]
pub struct IncidentArgs {
    /// From this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub since: String,
    /// Before this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub until: String,
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long)]
    pub recipient_domain: Option<String>,
    /// Only messages a policy rule of this name decided.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only messages with findings of this DLP detector.
    #[arg(long)]
    pub detector: Option<String>,
    #[arg(long, value_enum)]
    pub format: ReportFormat,
}

pub fn run_freeze(config: &Path, action: &FreezeAction) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let req = match action {
        FreezeAction::On {
            identity,
            all,
            reason,
            refuse_inbound,
        } => Request::Freeze {
            on: true,
            identity: identity.clone(),
            all: *all,
            reason: reason.clone(),
            refuse_inbound: *refuse_inbound,
        },
        FreezeAction::Off { identity, all } => Request::Freeze {
            on: false,
            identity: identity.clone(),
            all: *all,
            reason: None,
            refuse_inbound: false,
        },
        FreezeAction::Status { json } => {
            let state: FreezeState = call(&cfg, &Request::FreezeStatus)?;
            if *json {
                print_json(&state);
            } else {
                print_state(&state);
            }
            return Ok(());
        }
    };
    let state: FreezeState = call(&cfg, &req)?;
    print_state(&state);
    Ok(())
}

fn print_state(s: &FreezeState) {
    match &s.all {
        Some(e) => println!(
            "ALL frozen since {} by {}{}",
            when(e.at),
            e.admin,
            if e.refuse_inbound {
                ", refusing inbound"
            } else {
                ""
            }
        ),
        None => println!("global freeze: off"),
    }
    for (i, e) in &s.identities {
        println!(
            "identity {i} frozen since {} by {}{}",
            when(e.at),
            e.admin,
            if e.refuse_inbound {
                ", refusing inbound"
            } else {
                ""
            }
        );
    }
    println!("held messages: {}", s.held.len());
}

pub fn run_hold(config: &Path, release: bool, args: &HoldArgs) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let id = args.id.as_deref().map(parse_id).transpose()?;
    let req = Request::QueueHold {
        release,
        id,
        identity: args.identity.clone(),
        all: args.all,
    };
    let c: Count = call(&cfg, &req)?;
    let verb = if release { "released" } else { "held" };
    println!("{} message(s) {verb}", c.count);
    Ok(())
}

fn secs(s: &Option<String>) -> Result<Option<u64>, CliError> {
    Ok(s.as_deref()
        .map(super::audit::parse_time)
        .transpose()?
        .map(|ms| ms / 1000))
}

/// Bulk `quarantine list|add|release|delete`.
pub fn run_bulk(config: &Path, action: BulkAction, sel: &Selection) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let req = Request::QuarantineSelect {
        action,
        identity: sel.identity.clone(),
        since: secs(&sel.since)?,
        until: secs(&sel.until)?,
    };
    let rows: Vec<Selected> = call(&cfg, &req)?;
    let verb = match action {
        BulkAction::List => "",
        BulkAction::Add => "quarantined",
        BulkAction::Release => "released",
        BulkAction::Delete => "deleted and crypto-shredded",
    };
    for r in &rows {
        println!(
            "{}  {}  {}  {verb}",
            r.id,
            when(r.received_at),
            r.identity.as_deref().unwrap_or("-")
        );
    }
    eprintln!("{} message(s)", rows.len());
    Ok(())
}

pub fn run_incident(config: &Path, args: &IncidentArgs) -> Result<(), CliError> {
    let filter = IncidentFilter {
        since_ms: Some(super::audit::parse_time(&args.since)?),
        until_ms: Some(super::audit::parse_time(&args.until)?),
        identity: args.identity.clone(),
        recipient_domain: args.recipient_domain.clone(),
        rule: args.rule.clone(),
        detector: args.detector.clone(),
    };
    let report: Incident = match super::audit::daemon(config)? {
        Some(cfg) => call(&cfg, &Request::AuditIncident { filter })?,
        None => offline(config, &filter)?,
    };
    // The statement goes to stderr too, so it is seen even when stdout is a file.
    eprintln!("audit chain {}", report.chain);
    let out = match args.format {
        ReportFormat::Csv => report.to_csv(),
        ReportFormat::Json => report.to_json() + "\n",
        ReportFormat::Md => report.to_markdown(),
    };
    print!("{out}");
    let s = &report.summary;
    eprintln!(
        "{} messages, {} recipients, {} recipient domains, {} individuals, {} delivered ({} over verified TLS)",
        s.messages, s.recipients, s.recipient_domains, s.individuals, s.delivered, s.delivered_verified_tls
    );
    Ok(())
}

/// The daemon is stopped: open the spool, verify, report, and record the report.
fn offline(config: &Path, filter: &IncidentFilter) -> Result<Incident, CliError> {
    use crate::audit::{self, Audit, AuditSettings};
    let (cfg, spool) = super::audit::open_spool(config)?;
    let ring = spool.keyring();
    let store = spool.store().clone();
    let report = audit::incident::verified_incident(store.as_ref(), &ring, filter, None, || {
        audit::verify(store.as_ref(), &ring, None)
    })
    .map_err(CliError::Usage)?;
    let settings = AuditSettings {
        hostname: cfg.server.hostname.clone(),
        ..AuditSettings::default()
    };
    let trail = Audit::open(spool, settings).map_err(|e| CliError::Usage(e.to_string()))?;
    let ev = crate::control::incident_event(filter, &report, &super::audit::admin_name());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(trail.record(vec![ev]))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(report)
}
