//! `phigate queue list|show|retry|delete|stats`: through the running daemon.

use super::control_client::{call, load_config, print_json, when};
use super::CliError;
use crate::control::{Count, MessageView, QueueItem, Request, Stats};
use crate::spool::StateTag;
use crate::types::MessageId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;
use std::io::Write;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum QueueAction {
    /// List messages (IDs, times, sizes and per-recipient states; no addresses).
    List {
        /// Only messages with a recipient in this state (queued, in-flight, deferred,
        /// delivered, bounced, expired, quarantined).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a message's envelope, recipient states and attempts.
    Show {
        id: String,
        /// Also print the decrypted message (an audited action).
        #[arg(long)]
        body: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make a message (or, with --all, every pending message) due now.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Give up on a message and crypto-shred its content (no DSN is sent).
    Delete { id: String },
    /// Hold delivery of a message, of every pending message of an identity, or of all.
    Hold(super::freeze::HoldArgs),
    /// Release held messages (by ID, identity or all) for delivery.
    Release(super::freeze::HoldArgs),
    /// Counts by state.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

/// Parse a message ID argument with a one-line error.
pub fn parse_id(s: &str) -> Result<MessageId, CliError> {
    s.parse()
        .map_err(|_| CliError::Usage(format!("`{s}` is not a message ID (26-character ULID)")))
}

fn parse_state(s: &str) -> Result<StateTag, CliError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        CliError::Usage(format!(
            "`{s}` is not a state (queued, in-flight, deferred, delivered, bounced, expired, quarantined)"
        ))
    })
}

fn tag(t: StateTag) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn run(config: &Path, action: &QueueAction) -> Result<(), CliError> {
    match action {
        QueueAction::Hold(args) => return super::freeze::run_hold(config, false, args),
        QueueAction::Release(args) => return super::freeze::run_hold(config, true, args),
        _ => {}
    }
    let cfg = load_config(config)?;
    match action {
        QueueAction::Hold(_) | QueueAction::Release(_) => {}
        QueueAction::List { state, json } => {
            let state = state.as_deref().map(parse_state).transpose()?;
            let items: Vec<QueueItem> = call(&cfg, &Request::QueueList { state })?;
            if *json {
                print_json(&items);
                return Ok(());
            }
            println!(
                "{:<26}  {:<20}  {:>9}  {:<30}  NEXT ATTEMPT",
                "ID", "RECEIVED", "SIZE", "STATES"
            );
            for i in items {
                let states: Vec<String> = i
                    .states
                    .iter()
                    .map(|(t, n)| format!("{}:{n}", tag(*t)))
                    .collect();
                let mut states = states.join(",");
                if i.shredded {
                    states.push_str(" (shredded)");
                }
                println!(
                    "{:<26}  {:<20}  {:>9}  {:<30}  {}",
                    i.id,
                    when(i.received_at),
                    i.size,
                    states,
                    i.next_attempt.map_or_else(|| "-".into(), when)
                );
            }
        }
        QueueAction::Show { id, body, json } => {
            let id = parse_id(id)?;
            let view: MessageView = call(&cfg, &Request::QueueShow { id, body: *body })?;
            if *json {
                print_json(&view);
            } else if *body {
                let raw = B64
                    .decode(view.body_base64.unwrap_or_default())
                    .map_err(|e| CliError::Usage(format!("daemon sent a bad body: {e}")))?;
                std::io::stdout().write_all(&raw)?;
            } else {
                print_message(&view);
            }
        }
        QueueAction::Retry { id, all: _ } => {
            let id = id.as_deref().map(parse_id).transpose()?;
            let n: Count = call(&cfg, &Request::QueueRetry { id })?;
            println!("{} message(s) scheduled for immediate retry", n.count);
        }
        QueueAction::Delete { id } => {
            let id = parse_id(id)?;
            let _: Count = call(&cfg, &Request::QueueDelete { id })?;
            println!("message {id} deleted; its content is crypto-shredded");
        }
        QueueAction::Stats { json } => {
            let st: Stats = call(&cfg, &Request::QueueStats)?;
            if *json {
                print_json(&st);
                return Ok(());
            }
            println!("messages        {}", st.messages);
            println!("pending         {}", st.pending);
            println!(
                "oldest pending  {}",
                st.oldest_pending_age
                    .map_or_else(|| "-".into(), |a| format!("{a}s"))
            );
            println!("flushes         {}", st.flushes);
            for (t, n) in &st.recipients_by_state {
                println!("recipients {:<12} {n}", tag(*t));
            }
        }
    }
    Ok(())
}

/// Human form of `queue show` (also used by `quarantine show`).
pub fn print_message(v: &MessageView) {
    println!("id           {}", v.id);
    println!("received     {}", when(v.summary.received_at));
    println!("size         {}", v.summary.size);
    if let Some(q) = &v.quarantine {
        println!("quarantined  {} (rule {})", when(q.at), q.rule);
    }
    if let Some(t) = v.summary.shredded_at {
        println!("shredded     {} (content and envelope are gone)", when(t));
    }
    if let Some(env) = &v.envelope {
        let from = if env.mail_from.is_empty() {
            "<>"
        } else {
            env.mail_from.as_str()
        };
        println!("from         {from}");
        println!("listener     {} (peer {})", env.listener, env.peer_ip);
        if let Some(a) = &env.auth {
            println!("auth         {a}");
        }
    }
    let recipients = v.recipients.clone().unwrap_or_default();
    for (i, r) in v.summary.recipients.iter().enumerate() {
        let addr = v
            .envelope
            .as_ref()
            .and_then(|e| e.recipients.get(i))
            .map_or("(shredded)", |r| r.address.as_str());
        println!(
            "rcpt {i:<3}     {addr}  {}  attempts {}",
            tag(r.state),
            r.attempts
        );
        if let Some(st) = recipients.get(i) {
            if let Some(e) = &st.last_error {
                println!("             last error: {e}");
            }
            for a in &st.history {
                println!(
                    "             {}  {}  {}",
                    when(a.at),
                    a.host.as_deref().unwrap_or("-"),
                    a.outcome
                );
            }
        }
    }
}
