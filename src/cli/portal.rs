//! `phigate portal list|show|revoke|extend|resend`: secure portal messages, through the
//! daemon.

use super::control_client::{call, load_config, print_json, when};
use super::queue::parse_id;
use super::CliError;
use crate::config::Seconds;
use crate::control::{PortalRow, Request};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum PortalAction {
    /// Every portal message: ID, original message, state, expiry, pick-up.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One portal message, with its recipient.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a message: the link answers 410 and the content is crypto-shredded.
    Revoke { id: String },
    /// Keep the link working longer, e.g. `--by 7d`.
    Extend {
        id: String,
        #[arg(long)]
        by: Seconds,
    },
    /// Send the notification again, with the same link.
    Resend { id: String },
}

pub fn run(config: &Path, action: &PortalAction) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let (req, json) = match action {
        PortalAction::List { json } => (Request::PortalList, *json),
        PortalAction::Show { id, json } => (Request::PortalShow { id: parse_id(id)? }, *json),
        PortalAction::Revoke { id } => (Request::PortalRevoke { id: parse_id(id)? }, false),
        PortalAction::Extend { id, by } => (
            Request::PortalExtend {
                id: parse_id(id)?,
                by: by.0,
            },
            false,
        ),
        PortalAction::Resend { id } => (Request::PortalResend { id: parse_id(id)? }, false),
    };
    if let Request::PortalList = req {
        let rows: Vec<PortalRow> = call(&cfg, &req)?;
        if json {
            print_json(&rows);
            return Ok(());
        }
        println!(
            "{:<26}  {:<26}  {:<8}  {:<20}  PICKED UP",
            "ID", "MESSAGE", "STATE", "EXPIRES"
        );
        for r in &rows {
            println!(
                "{:<26}  {:<26}  {:<8}  {:<20}  {}",
                r.id.to_string(),
                format!("{}#{}", r.message, r.rcpt_index),
                r.state,
                when(r.expires_at),
                r.picked_up.map(when).unwrap_or_else(|| "-".into())
            );
        }
        return Ok(());
    }
    let row: PortalRow = call(&cfg, &req)?;
    if json {
        print_json(&row);
        return Ok(());
    }
    println!("portal message {}", row.id);
    println!(
        "  message:     {} (recipient {})",
        row.message, row.rcpt_index
    );
    if let Some(r) = &row.recipient {
        println!("  recipient:   {r}");
    }
    println!("  state:       {}", row.state);
    println!("  reason:      {}", row.reason);
    println!("  created:     {}", when(row.created));
    println!("  expires:     {}", when(row.expires_at));
    if let Some(p) = row.picked_up {
        println!("  picked up:   {}", when(p));
    }
    println!(
        "  notices {}, views {}, downloads {}, replies {}, attachments {}",
        row.notices, row.views, row.downloads, row.replies, row.attachments
    );
    Ok(())
}
