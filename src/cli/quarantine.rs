//! `phigate quarantine list|show|release|delete`: held messages, through the daemon.

use super::control_client::{call, load_config, print_json, when};
use super::queue::{parse_id, print_message};
use super::CliError;
use crate::control::{Count, MessageView, QuarantineRow, Request};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum QuarantineAction {
    /// List quarantined messages with the rule that held them.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a quarantined message's envelope and states (no body).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Release a message: its held recipients are queued for delivery now.
    Release { id: String },
    /// Delete a held message and crypto-shred its content.
    Delete { id: String },
}

pub fn run(config: &Path, action: &QuarantineAction) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    match action {
        QuarantineAction::List { json } => {
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
        QuarantineAction::Release { id } => {
            let id = parse_id(id)?;
            let _: Count = call(&cfg, &Request::QuarantineRelease { id })?;
            println!("message {id} released for delivery");
        }
        QuarantineAction::Delete { id } => {
            let id = parse_id(id)?;
            let _: Count = call(&cfg, &Request::QuarantineDelete { id })?;
            println!("message {id} deleted; its content is crypto-shredded");
        }
    }
    Ok(())
}
