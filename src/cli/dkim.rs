//! `phigate dkim generate DOMAIN --selector S [--algorithm ed25519|rsa]`: writes a new
//! signing key (mode 0600, never over an existing file) and prints the DNS TXT record
//! to publish, alone on standard output.

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
}

pub fn run(config: &Path, action: &DkimAction) -> Result<(), CliError> {
    match action {
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
