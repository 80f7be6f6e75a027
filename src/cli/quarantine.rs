//! `phigate quarantine list|show|release|delete`: held messages, through the daemon.

use super::control_client::{call, load_config, print_json, when};
use super::queue::{parse_id, print_message};
use super::CliError;
use crate::control::{Count, MessageView, QuarantineRow, Request};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum QuarantineAction {
    /// List quarantined messages with the rule that held them (with a selection: the
    /// quarantined messages of an identity and/or time range).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: super::freeze::Selection,
    },
    /// Quarantine every pending message of the selection (breach containment).
    Add {
        #[command(flatten)]
        select: super::freeze::Selection,
    },
    /// Show a quarantined message's envelope and states (no body).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Release a message (or every quarantined message of the selection): its held
    /// recipients are queued for delivery now.
    Release {
        #[arg(required_unless_present_any = ["identity", "since", "until"])]
        id: Option<String>,
        #[command(flatten)]
        select: super::freeze::Selection,
    },
    /// Delete a held message (or every quarantined message of the selection) and
    /// crypto-shred its content.
    Delete {
        #[arg(required_unless_present_any = ["identity", "since", "until"])]
        id: Option<String>,
        #[command(flatten)]
        select: super::freeze::Selection,
    },
}

pub fn run(config: &Path, action: &QuarantineAction) -> Result<(), CliError> {
    use super::freeze::run_bulk;
    use crate::control::BulkAction;
    match action {
        QuarantineAction::List { select, .. } if select.given() => {
            return run_bulk(config, BulkAction::List, select)
        }
        QuarantineAction::Add { select } => {
            if !select.given() {
                return Err(CliError::Usage(
                    "quarantine add: give --identity, --since and/or --until".into(),
                ));
            }
            return run_bulk(config, BulkAction::Add, select);
        }
        QuarantineAction::Release { id: None, select } => {
            return run_bulk(config, BulkAction::Release, select)
        }
        QuarantineAction::Delete { id: None, select } => {
            return run_bulk(config, BulkAction::Delete, select)
        }
        _ => {}
    }
    let cfg = load_config(config)?;
    match action {
        QuarantineAction::Add { .. }
        | QuarantineAction::Release { id: None, .. }
        | QuarantineAction::Delete { id: None, .. } => {}
        QuarantineAction::List { json, .. } => {
            let rows: Vec<QuarantineRow> = call(&cfg, &Request::QuarantineList)?;
            if *json {
                print_json(&rows);
                return Ok(());
            }
            println!("{:<26}  {:<20}  RULE", "ID", "HELD SINCE");
            for r in rows {
                println!("{:<26}  {:<20}  {}", r.id, when(r.at), r.rule);
            }
        }
        QuarantineAction::Show { id, json } => {
            let id = parse_id(id)?;
            let view: MessageView = call(&cfg, &Request::QuarantineShow { id })?;
            if *json {
                print_json(&view);
            } else {
                print_message(&view);
            }
        }
        QuarantineAction::Release { id: Some(id), .. } => {
            let id = parse_id(id)?;
            let _: Count = call(&cfg, &Request::QuarantineRelease { id })?;
            println!("message {id} released for delivery");
        }
        QuarantineAction::Delete { id: Some(id), .. } => {
            let id = parse_id(id)?;
            let _: Count = call(&cfg, &Request::QuarantineDelete { id })?;
            println!("message {id} deleted; its content is crypto-shredded");
        }
    }
    Ok(())
}
