//! `phigate dkim generate DOMAIN --selector S [--algorithm ed25519|rsa]`: writes a new
//! signing key (mode 0600, never over an existing file) and prints the DNS TXT record
//! to publish, alone on standard output. `phigate dkim check DOMAIN`: looks each of the
//! domain's `[[dkim]]` records up (phigate's own DNSSEC-validating resolver) and says
//! whether it carries the key, then which key signs and what to do about the others;
//! exit status 1 unless every record is published. `phigate dkim rotate DOMAIN`: a new
//! key and selector appended to the domain's rotation group in the config file; the
//! daemon signs with it once its record is published (see `dkim::rotation`).

use super::control_client::{call, ClientError};
use super::CliError;
use crate::control::Request;
use crate::dkim::rotation::Signing;
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
    /// Start a two-selector rotation: a new key, signed with once its record is published.
    Rotate {
        domain: String,
        /// The new selector (default: s<YYYYMMDD>).
        #[arg(long)]
        selector: Option<String>,
        /// Default: the algorithm of the domain's newest key.
        #[arg(long, value_enum)]
        algorithm: Option<AlgorithmArg>,
        /// Where to write the key (default: beside the newest key).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// A new key at `path` (mode 0600, never over an existing file); returns its record.
fn write_key(path: &Path, alg: Algorithm) -> Result<String, CliError> {
    let g = generate(alg).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            CliError::Usage(format!(
                "{}: {e} (refusing to overwrite a key)",
                path.display()
            ))
        })?;
    f.write_all(g.pem.as_bytes())?;
    f.sync_all()?;
    Ok(g.record)
}

fn day(secs: u64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// What to do about each rotation group, as lines for `dkim check`.
fn rotation_advice(groups: &[Signing], now: u64, daemon: bool) -> Vec<String> {
    let mut out = Vec::new();
    for g in groups {
        let since = match g.since {
            Some(t) => format!(" since {}", day(t)),
            None => String::new(),
        };
        out.push(format!(
            "{}: signing with selector {}{since}",
            g.domain, g.selector
        ));
        for w in &g.waiting {
            out.push(format!(
                "  {w}: waiting for its record; phigate switches to it once the record is published{}",
                if daemon { "" } else { " (checked at start and hourly)" }
            ));
        }
        for (old, until) in &g.retiring {
            out.push(match until {
                Some(t) if *t > now => format!(
                    "  {old}: replaced; keep its record published until {} (grace for mail in transit), then remove the record and its [[dkim]] entry",
                    day(*t)
                ),
                Some(_) => format!(
                    "  {old}: grace period over; remove its record and its [[dkim]] entry"
                ),
                None => format!(
                    "  {old}: replaced once the daemon sees {}'s record; keep its record published for {} days after that",
                    g.selector,
                    crate::dkim::rotation::GRACE_SECS / 86_400
                ),
            });
        }
    }
    out
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
    // A running daemon looks its rotation records up now, and says who signs.
    let daemon: Option<Vec<Signing>> = match call(&cfg, &Request::DkimRefresh) {
        Ok(groups) => Some(groups),
        Err(ClientError::NotRunning { .. }) => None,
        Err(e) => return Err(e.into()),
    };
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
                keys.mark_published(r, true);
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
    let now = crate::types::now_secs();
    let groups = match &daemon {
        Some(g) => g.clone(),
        // Without a daemon: the same rule over these lookups, and its saved switch times.
        None => {
            let state =
                crate::dkim::rotation::State::load(&cfg.server.data_dir.join("dkim-rotation.json"));
            crate::dkim::rotation::signing(&keys, &state)
        }
    };
    let groups: Vec<Signing> = groups
        .into_iter()
        .filter(|g| g.domain == records[0].domain)
        .collect();
    for line in rotation_advice(&groups, now, daemon.is_some()) {
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

/// `dkim rotate`: the new key written, its `[[dkim]]` entry appended to the config
/// file (checked before it replaces the file), the record printed, the daemon reloaded.
fn rotate(
    config: &Path,
    domain: &str,
    selector: Option<&str>,
    algorithm: Option<AlgorithmArg>,
    key_file: Option<&Path>,
) -> Result<(), CliError> {
    let file = config.display().to_string();
    let text = std::fs::read_to_string(config)?;
    let cfg = crate::config::Config::from_str(&text, &file)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let Some(newest) = cfg
        .dkim
        .iter()
        .rev()
        .find(|d| d.domain.eq_ignore_ascii_case(&domain))
    else {
        return Err(CliError::Usage(format!(
            "no [[dkim]] key for {domain} in {file}: make the first one with `phigate dkim generate`"
        )));
    };
    let taken = |s: &str| {
        cfg.dkim
            .iter()
            .any(|d| d.domain.eq_ignore_ascii_case(&domain) && d.selector == s)
    };
    let selector = match selector {
        Some(s) if taken(s) => {
            return Err(CliError::Usage(format!(
                "selector {s} is already configured for {domain}"
            )))
        }
        Some(s) => s.to_string(),
        None => {
            let fmt = time::macros::format_description!("[year][month][day]");
            let base = format!(
                "s{}",
                time::OffsetDateTime::now_utc()
                    .format(&fmt)
                    .unwrap_or_default()
            );
            (0..26u8)
                .map(|i| {
                    if i == 0 {
                        base.clone()
                    } else {
                        format!("{base}{}", (b'a' + i) as char)
                    }
                })
                .find(|s| !taken(s))
                .ok_or_else(|| CliError::Usage("no free selector today: pass --selector".into()))?
        }
    };
    if !is_label(&domain) || !is_label(&selector) {
        return Err(CliError::Usage(
            "DOMAIN and --selector take letters, digits, '-' and '.'".into(),
        ));
    }
    let current = crate::dkim::DkimKeys::load(std::slice::from_ref(newest))
        .map_err(|e| CliError::Usage(format!("dkim key_file {e}")))?;
    let alg = match algorithm {
        Some(AlgorithmArg::Ed25519) => Algorithm::Ed25519,
        Some(AlgorithmArg::Rsa) => Algorithm::Rsa2048,
        None if current
            .records_for(&domain)
            .first()
            .is_some_and(|r| r.kind == "ed25519") =>
        {
            Algorithm::Ed25519
        }
        None => Algorithm::Rsa2048,
    };
    let path = key_file.map(Path::to_path_buf).unwrap_or_else(|| {
        newest
            .key_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{domain}.{selector}.key"))
    });
    let strings = |v: &[String]| {
        toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect()).to_string()
    };
    let mut entry = format!(
        "\n# Added by `phigate dkim rotate`: signs in place of selector {old} once its record is\n\
         # published. Remove the {old} entry after the grace period `phigate dkim check` shows.\n\
         [[dkim]]\ndomain = {d}\nselector = {s}\nkey_file = {k}\n",
        old = newest.selector,
        d = toml::Value::String(newest.domain.clone()),
        s = toml::Value::String(selector.clone()),
        k = toml::Value::String(path.display().to_string()),
    );
    if !newest.match_from.is_empty() {
        entry.push_str(&format!("match_from = {}\n", strings(&newest.match_from)));
    }
    if let Some(h) = &newest.headers {
        entry.push_str(&format!("headers = {}\n", strings(h)));
    }
    let mut new_text = text.clone();
    if !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&entry);
    let record = write_key(&path, alg)?;
    // The amended file must parse and its keys load before it replaces the old one.
    let checked = crate::config::Config::from_str(&new_text, &file)
        .map_err(CliError::from)
        .and_then(|c| {
            crate::dkim::DkimKeys::load(&c.dkim)
                .map_err(|e| CliError::Usage(format!("dkim key_file {e}")))
        });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    println!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        txt_strings(&record)
    );
    if let Err(e) = replace_file(config, &new_text) {
        eprintln!(
            "key written to {}, but {file} could not be updated ({e}); add this entry yourself:\n{entry}",
            path.display()
        );
        return Err(CliError::Failed(format!("{file}: {e}")));
    }
    eprintln!(
        "key written to {}; [[dkim]] entry for selector {selector} added to {file}.\n\
         Publish the record above. phigate keeps signing with {} until it sees it (checked hourly;\n\
         `phigate dkim check {domain}` checks now), then signs with {selector}.",
        path.display(),
        newest.selector
    );
    match call::<String>(&cfg, &Request::Reload) {
        Ok(_) => eprintln!("the running daemon reloaded its configuration"),
        Err(ClientError::NotRunning { .. }) => {
            eprintln!("the daemon is not running; it loads the new key at its next start")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `path`'s contents replaced by `text` in one rename, keeping its permissions.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let perms = std::fs::metadata(path)?.permissions();
    let tmp = path.with_extension("rotate.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.set_permissions(perms)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn run(config: &Path, action: &DkimAction) -> Result<(), CliError> {
    match action {
        DkimAction::Check { domain } => check(config, domain),
        DkimAction::Rotate {
            domain,
            selector,
            algorithm,
            key_file,
        } => rotate(
            config,
            domain,
            selector.as_deref(),
            *algorithm,
            key_file.as_deref(),
        ),
        DkimAction::Generate {
            domain,
            selector,
            algorithm,
            key_file,
        } => {
            if !is_label(domain) || !is_label(selector) {
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
            let record = write_key(&path, alg)?;
            println!(
                "{selector}._domainkey.{domain}. IN TXT {}",
                txt_strings(&record)
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
