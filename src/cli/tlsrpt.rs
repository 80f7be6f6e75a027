//! `phigate tlsrpt show [--json] | send-now`: the daemon's RFC 8460 TLS report
//! aggregates, through the control socket.

use super::control_client::{call, load_config, print_json, when};
use super::CliError;
use crate::control::Request;
use crate::tlsrpt::{SentRow, ShowRow};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum TlsRptAction {
    /// Today's and pending aggregates per recipient domain.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Send every aggregate now, today's so far included.
    SendNow {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Path, action: &TlsRptAction) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    match action {
        TlsRptAction::Show { json } => {
            let rows: Vec<ShowRow> = call(&cfg, &Request::TlsrptShow)?;
            if *json {
                print_json(&rows);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no TLS-RPT results recorded");
            }
            for r in &rows {
                println!(
                    "{:<30} {} since {}  {} ok  {} failed{}",
                    r.domain,
                    r.day,
                    when(r.start),
                    r.successes,
                    r.failures,
                    if r.pending { "  (pending)" } else { "" }
                );
                for p in &r.aggregate.policies {
                    for d in &p.details {
                        println!(
                            "    {:<26} {:<15} {} {} x{}",
                            d.result.as_str(),
                            format!("{:?}", p.policy.kind).to_ascii_lowercase(),
                            d.mx_host,
                            d.receiving_ip.map(|i| i.to_string()).unwrap_or_default(),
                            d.count
                        );
                    }
                }
            }
            Ok(())
        }
        TlsRptAction::SendNow { json } => {
            let rows: Vec<SentRow> = call(&cfg, &Request::TlsrptSendNow)?;
            if *json {
                print_json(&rows);
            } else if rows.is_empty() {
                println!("nothing to send");
            }
            if !*json {
                for r in &rows {
                    println!(
                        "{:<30} {} {}: {}{}",
                        r.domain,
                        r.day,
                        r.outcome,
                        r.delivered.join(", "),
                        if r.errors.is_empty() {
                            String::new()
                        } else {
                            format!(" (errors: {})", r.errors.join("; "))
                        }
                    );
                }
            }
            if rows.iter().any(|r| r.outcome == "retry") {
                return Err(CliError::Failed(
                    "some reports could not be sent; they are retried at the next run".into(),
                ));
            }
            Ok(())
        }
    }
}
