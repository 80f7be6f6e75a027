//! `phigate keys generate|rotate|list|rewrap`: the master keyring.
//!
//! `generate` and `rotate` edit the key file directly (the daemon need not run);
//! `rotate` then asks a running daemon to reload it. `list` and `rewrap` need the
//! daemon, which owns the spool and knows how many messages each key wraps.

use super::control_client::{call, load_config, print_json, when, ClientError};
use super::CliError;
use crate::control::{Count, KeyRow, Request};
use crate::spool::keys;
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Create the keyring file (`spool.key_file`, mode 0600) with one key; never overwrites.
    Generate,
    /// Add a new current key; new messages use it, older ones still open.
    Rotate,
    /// Key IDs, creation dates and how many messages each wraps (never key material).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every message's data key under the current key.
    Rewrap,
}

pub fn run(config: &Path, action: &KeysAction) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let file = &cfg.spool.key_file;
    match action {
        KeysAction::Generate => {
            let info = keys::generate_file(file)?;
            println!("generated keyring {} with key {}", file.display(), info.id);
        }
        KeysAction::Rotate => {
            let info = keys::rotate_file(file)?;
            println!(
                "added key {} to {}; it is now current",
                info.id,
                file.display()
            );
            match call::<Vec<KeyRow>>(&cfg, &Request::KeysReload) {
                Ok(_) => println!("the running daemon reloaded the keyring"),
                Err(ClientError::NotRunning { .. }) => {
                    println!("the daemon is not running; it uses the new key from its next start")
                }
                Err(e) => return Err(e.into()),
            }
        }
        KeysAction::List { json } => {
            let rows: Vec<KeyRow> = call(&cfg, &Request::KeysList)?;
            if *json {
                print_json(&rows);
                return Ok(());
            }
            println!(
                "{:<18}  {:<20}  {:<7}  {:<8}  EVENTS",
                "ID", "CREATED", "CURRENT", "MESSAGES"
            );
            for r in rows {
                println!(
                    "{:<18}  {:<20}  {:<7}  {:<8}  {}",
                    r.id,
                    when(r.created),
                    if r.current { "yes" } else { "" },
                    r.messages,
                    r.events
                );
            }
        }
        KeysAction::Rewrap => {
            let n: Count = call(&cfg, &Request::KeysRewrap)?;
            println!("{} message(s) re-wrapped under the current key", n.count);
        }
    }
    Ok(())
}
