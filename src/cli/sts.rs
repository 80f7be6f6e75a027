//! `phigate sts show|refresh|purge DOMAIN`: the MTA-STS policy cache in the spool.
//!
//! There is no control socket yet, so these commands open the spool themselves; sled
//! allows one process at a time, and while the daemon runs they say so and stop.

use super::CliError;
use crate::config::Config;
use crate::delivery::sts::{CacheEntry, StsCache};
use crate::delivery::sts_store::SpoolStsCache;
use crate::delivery::Deliverer;
use crate::spool::{Spool, SpoolError};
use clap::Subcommand;
use std::path::Path;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum StsAction {
    /// Print the cached policy for a domain.
    Show {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Fetch the domain's policy now and cache it.
    Refresh { domain: String },
    /// Forget the cached policy (the next delivery fetches it again).
    Purge { domain: String },
}

fn open_spool(cfg: &Config) -> Result<Arc<Spool>, CliError> {
    let dir = cfg.server.data_dir.join("spool");
    if !dir.exists() {
        return Err(CliError::Usage(format!(
            "no spool at {} (has phigate ever run with this configuration?)",
            dir.display()
        )));
    }
    let keyring = crate::server::load_keyring(cfg)?;
    match Spool::open(&dir, keyring) {
        Ok(s) => Ok(Arc::new(s)),
        Err(SpoolError::Io(e)) if is_lock_error(&e) => Err(CliError::Io(std::io::Error::other(
            format!(
                "the spool at {} is in use by a running phigate; stop it (systemctl stop phigate) and retry",
                dir.display()
            ),
        ))),
        Err(e) => Err(e.into()),
    }
}

/// sled reports a second opener as an I/O error about its file lock.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().to_ascii_lowercase().contains("lock")
}

fn when(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn entry_json(domain: &str, e: &CacheEntry) -> serde_json::Value {
    serde_json::json!({
        "domain": domain,
        "mode": e.cached.policy.mode.as_str(),
        "max_age": e.cached.policy.max_age,
        "mx": e.cached.policy.mx,
        "txt_id": e.cached.txt_id,
        "fetched_at": e.cached.fetched_at,
        "expires_at": e.cached.expires_at(),
        "refresh_at": e.refresh_at,
        "failures": e.failures,
        "retry_at": e.retry_at,
    })
}

fn print_entry(domain: &str, e: &CacheEntry) {
    println!("domain      {domain}");
    println!("mode        {}", e.cached.policy.mode.as_str());
    println!("mx          {}", e.cached.policy.mx.join(", "));
    println!("max_age     {}", e.cached.policy.max_age);
    println!("txt id      {}", e.cached.txt_id);
    println!("fetched     {}", when(e.cached.fetched_at));
    println!("expires     {}", when(e.cached.expires_at()));
    println!("refresh     {}", when(e.refresh_at));
    if e.failures > 0 {
        println!("failures    {} (next try {})", e.failures, when(e.retry_at));
    }
}

pub fn run(config: &Path, action: &StsAction) -> Result<(), CliError> {
    let cfg = Config::read(config)?;
    let spool = open_spool(&cfg)?;
    let cache = SpoolStsCache::new(spool.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let norm = |d: &str| d.trim_end_matches('.').to_ascii_lowercase();
    match action {
        StsAction::Show { domain, json } => {
            let domain = norm(domain);
            match (cache.get(&domain), json) {
                (Some(e), true) => println!("{}", entry_json(&domain, &e)),
                (Some(e), false) => print_entry(&domain, &e),
                (None, true) => println!(
                    "{}",
                    serde_json::json!({ "domain": domain, "policy": null })
                ),
                (None, false) => println!("no cached MTA-STS policy for {domain}"),
            }
            Ok(())
        }
        StsAction::Purge { domain } => {
            let domain = norm(domain);
            let had = cache.get(&domain).is_some();
            rt.block_on(cache.remove(&domain))
                .map_err(|e| CliError::Io(std::io::Error::other(e)))?;
            if had {
                println!("purged the cached MTA-STS policy for {domain}");
            } else {
                println!("no cached MTA-STS policy for {domain}");
            }
            Ok(())
        }
        StsAction::Refresh { domain } => {
            let domain = norm(domain);
            let result = rt.block_on(async {
                let d = Deliverer::new(&cfg.delivery)
                    .await?
                    .with_sts_cache(Arc::new(SpoolStsCache::new(spool.clone())));
                Ok::<_, CliError>(d.sts_refresh(&domain).await)
            })?;
            println!("{domain}: {}", result.outcome);
            if let Some(e) = cache.get(&domain) {
                print_entry(&domain, &e);
            }
            if result.policy.is_none() {
                return Err(CliError::Io(std::io::Error::other(format!(
                    "no MTA-STS policy cached for {domain}"
                ))));
            }
            Ok(())
        }
    }
}
