//! `phigate dkim generate DOMAIN --selector S [--algorithm ed25519|rsa]`: writes a new
//! signing key (mode 0600, never over an existing file) and prints the DNS TXT record
//! to publish, alone on standard output. `phigate dkim check DOMAIN`: looks each of the
//! domain's `[[dkim]]` records up (phigate's own DNSSEC-validating resolver) and says
//! whether it carries the key; exit status 1 unless every one does.

use super::CliError;
use crate::dkim::{generate, txt_strings, Algorithm};
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgorithmArg {
    Ed25519,
    /// RSA-2048: verified by every receiver.
    Rsa,
}

#[derive(Subcommand, Debug)]
pub enum DkimAction {
    /// Make a key for DOMAIN and print its TXT record.
    Generate {
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: AlgorithmArg,
        /// Where to write the key (default: dkim/DOMAIN.SELECTOR.key beside the config).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Is each of DOMAIN's keys published, and does the record match the key?
    Check { domain: String },
}

fn check(config: &Path, domain: &str) -> Result<(), CliError> {
    use crate::dns::{HickoryResolver, Resolver, ResolverSettings};
    let cfg = crate::config::Config::read(config)?;
    let keys = crate::dkim::DkimKeys::load(&cfg.dkim)
        .map_err(|e| CliError::Usage(format!("dkim key_file {e}")))?;
    let records = keys.records_for(domain);
    if records.is_empty() {
        return Err(CliError::Failed(format!(
            "no [[dkim]] key for {domain} in {}",
            config.display()
        )));
    }
    let settings = ResolverSettings {
        servers: cfg.delivery.dns_servers.clone(),
        trust_anchor: cfg.delivery.dnssec_trust_anchor.clone(),
        timeout: Some(std::time::Duration::from_secs(5)),
    };
    let resolver = HickoryResolver::new(&settings).map_err(|e| CliError::Failed(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut bad = 0;
    for r in &records {
        let name = r.name();
        let line = match rt.block_on(resolver.txt(&name)) {
            Ok(a) if a.records.iter().any(|t| r.matches(t)) => {
                format!(
                    "{name}  ok: the record matches the key ({}, DNSSEC {})",
                    r.kind,
                    a.status.as_str()
                )
            }
            Ok(a) if a.records.is_empty() => {
                bad += 1;
                format!("{name}  missing: no TXT record published")
            }
            Ok(_) => {
                bad += 1;
                format!("{name}  mismatch: the published record holds another key")
            }
            Err(e) => {
                bad += 1;
                format!("{name}  lookup failed: {e}")
            }
        };
        println!("{line}");
    }
    if bad > 0 {
        return Err(CliError::Failed(format!(
            "{bad} of {} DKIM record(s) for {domain} not published as configured",
            records.len()
        )));
    }
    Ok(())
}

pub fn run(config: &Path, action: &DkimAction) -> Result<(), CliError> {
    match action {
        DkimAction::Check { domain } => check(config, domain),
        DkimAction::Generate {
            domain,
            selector,
            algorithm,
            key_file,
        } => {
            let label = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            };
            if !label(domain) || !label(selector) {
                return Err(CliError::Usage(
                    "DOMAIN and --selector take letters, digits, '-' and '.'".into(),
                ));
            }
            let path = key_file.clone().unwrap_or_else(|| {
                config
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("dkim")
                    .join(format!("{domain}.{selector}.key"))
            });
            let alg = match algorithm {
                AlgorithmArg::Ed25519 => Algorithm::Ed25519,
                AlgorithmArg::Rsa => Algorithm::Rsa2048,
            };
            let g = generate(alg).map_err(|e| CliError::Usage(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    CliError::Usage(format!(
                        "{}: {e} (refusing to overwrite a key)",
                        path.display()
                    ))
                })?;
            f.write_all(g.pem.as_bytes())?;
            f.sync_all()?;
            println!(
                "{selector}._domainkey.{domain}. IN TXT {}",
                txt_strings(&g.record)
            );
            eprintln!(
                "key written to {}; sign with it once the record is published:\n\n[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"",
                path.display(),
                path.display()
            );
            Ok(())
        }
    }
}
