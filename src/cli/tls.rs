//! `phigate tls check DOMAIN [--json]`: what outbound TLS phigate would require for a
//! domain and whether delivery would succeed now. Resolves MX, DNSSEC, TLSA and the
//! MTA-STS policy, then connects to each MX and stops after the TLS handshake (no mail).

use super::CliError;
use crate::config::{Config, DeliveryMode};
use crate::delivery::{Deliverer, TlsCheckReport};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum TlsAction {
    /// Check a recipient domain's MX hosts, DANE and MTA-STS (no mail is sent).
    Check {
        domain: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Path, action: &TlsAction) -> Result<(), CliError> {
    let TlsAction::Check { domain, json } = action;
    let cfg = Config::read(config)?;
    // The check is about direct MX delivery, whatever mode the gateway runs in.
    let mut delivery = cfg.delivery.clone();
    delivery.mode = DeliveryMode::Mx;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let d = Deliverer::new(&delivery)
            .await?
            .with_helo_name(&cfg.server.hostname);
        Ok::<_, CliError>(d.tls_check(domain).await)
    })?;
    let mut report = report;
    report.dkim_key = crate::dkim::DkimKeys::load(&cfg.dkim)
        .map(|k| k.signs(&report.domain))
        .unwrap_or(false);
    if *json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Io(std::io::Error::other(e)))?;
        println!("{text}");
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Human-readable report: a summary, then one block per MX host.
pub fn table(r: &TlsCheckReport) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: &str| {
        let line = format!("{k:<16} {v}");
        out.push_str(line.trim_end());
        out.push('\n');
    };
    row("domain", &r.domain);
    row("tls level", &r.level);
    match &r.route_error {
        Some(e) => row("MX", &format!("error: {e}")),
        None => row("MX", &r.mx.join(", ")),
    }
    row("MX DNSSEC", or_dash(&r.mx_dnssec));
    row("TLS-RPT", r.tls_rpt.as_deref().unwrap_or("none"));
    row("DKIM key", yes(r.dkim_key));
    let mode = r.mta_sts_mode.as_deref().unwrap_or("none");
    row("MTA-STS", &format!("{} [mode {mode}]", r.mta_sts));
    if !r.mta_sts_mx.is_empty() {
        row("MTA-STS mx", &r.mta_sts_mx.join(", "));
    }
    for h in &r.hosts {
        row("", "");
        row("host", &format!("{}:{}", h.host, h.port));
        row(
            "  addresses",
            &format!("{} ({})", h.ips.join(", "), or_dash(&h.address_dnssec)),
        );
        row(
            "  TLSA",
            &if h.tlsa.is_empty() {
                "-".to_string()
            } else {
                h.tlsa.join("; ")
            },
        );
        row("  DANE", or_dash(&h.dane));
        row("  required", or_dash(&h.requirement));
        row("  connect", or_dash(&h.connect));
        if let Some(hop) = &h.hop {
            row(
                "  TLS",
                &format!("{} {} via {}", hop.tls_version, hop.cipher, hop.method),
            );
        }
        row("  deliverable", yes(h.would_deliver));
    }
    row("", "");
    row("would deliver", yes(r.would_deliver));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::HostCheck;

    #[test]
    fn table_shows_each_host_and_the_verdict() {
        let r = TlsCheckReport {
            domain: "example.org".into(),
            level: "Auto".into(),
            mx: vec!["mx1.example.org".into()],
            mx_dnssec: "secure".into(),
            mta_sts: "no policy".into(),
            hosts: vec![HostCheck {
                host: "mx1.example.org".into(),
                port: 25,
                requirement: "dane".into(),
                connect: "TLS established".into(),
                would_deliver: true,
                ..HostCheck::default()
            }],
            would_deliver: true,
            ..TlsCheckReport::default()
        };
        let t = table(&r);
        assert!(t.contains("mx1.example.org:25"), "{t}");
        assert!(t.contains(&format!("{:<16} dane\n", "  required")), "{t}");
        assert!(t.contains("would deliver    yes"), "{t}");
        assert!(t.contains("MTA-STS          no policy [mode none]"), "{t}");
    }
}
