//! `phigate api-key create|list|revoke`: keys for the HTTPS API, kept (hashed) by the
//! daemon. `create` prints the key once, alone on standard output, so scripts can
//! capture it.

use super::control_client::{call, load_config, print_json, when};
use super::CliError;
use crate::api::keys::{KeyRecord, NewKey, Scope};
use crate::config::Seconds;
use crate::control::{CreatedKey, Request};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum ApiKeyAction {
    /// Create a key and print it (once) on standard output.
    Create {
        name: String,
        /// Comma-separated: send, read.
        #[arg(long, default_value = "send")]
        scope: String,
        /// Its mail goes to data_dir/sandbox/, never to a recipient.
        #[arg(long)]
        sandbox: bool,
        /// e.g. 90d; none: never expires.
        #[arg(long)]
        expires: Option<String>,
        /// Keys of the same owner may read each other's message status (default: NAME).
        #[arg(long)]
        owner: Option<String>,
    },
    /// The keys (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: its next request gets 401.
    Revoke { name: String },
}

pub fn run(config: &Path, action: &ApiKeyAction) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    match action {
        ApiKeyAction::Create {
            name,
            scope,
            sandbox,
            expires,
            owner,
        } => {
            let scopes = Scope::parse_list(scope).map_err(|e| CliError::Usage(e.to_string()))?;
            let expires_in = match expires {
                Some(e) => Some(
                    e.parse::<Seconds>()
                        .map_err(|m| CliError::Usage(format!("--expires: {m}")))?
                        .0,
                ),
                None => None,
            };
            let new = NewKey {
                name: name.clone(),
                owner: owner.clone(),
                scopes,
                sandbox: *sandbox,
                expires_in,
            };
            let created: CreatedKey = call(&cfg, &Request::ApiKeyCreate { new })?;
            println!("{}", created.key);
        }
        ApiKeyAction::List { json } => {
            let keys: Vec<KeyRecord> = call(&cfg, &Request::ApiKeyList)?;
            if *json {
                print_json(&keys);
            } else {
                for k in keys {
                    let scopes: Vec<&str> = k
                        .scopes
                        .iter()
                        .map(|s| match s {
                            Scope::Send => "send",
                            Scope::Read => "read",
                        })
                        .collect();
                    println!(
                        "{}\towner={}\tscopes={}\t{}created={}\t{}",
                        k.name,
                        k.owner,
                        scopes.join(","),
                        if k.sandbox { "sandbox\t" } else { "" },
                        when(k.created_at),
                        match (k.revoked_at, k.expires_at) {
                            (Some(t), _) => format!("revoked={}", when(t)),
                            (None, Some(t)) => format!("expires={}", when(t)),
                            (None, None) => "active".into(),
                        }
                    );
                }
            }
        }
        ApiKeyAction::Revoke { name } => {
            let r: KeyRecord = call(&cfg, &Request::ApiKeyRevoke { name: name.clone() })?;
            println!("revoked {}", r.name);
        }
    }
    Ok(())
}
