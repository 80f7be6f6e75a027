//! Command line: `phigate serve | check-config | user ...`. Every command takes
//! `--config PATH`, prints a short answer, and exits non-zero with a one-line reason.

mod api_key;
mod audit;
pub mod control_client;
pub mod dkim;
mod dlp;
mod freeze;
mod keys;
mod portal;
mod quarantine;
mod queue;
mod sts;
mod tls;
mod tlsrpt;
mod user;

use crate::config::{self, Config};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "phigate",
    version,
    about = "TLS-only SMTP relay gateway for mail carrying protected health information"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH, env = "PHIGATE_CONFIG")]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level filter (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Use the sandbox configuration built into the binary (listeners on 127.0.0.1,
        /// self-signed certificate and data under ./var, nothing is ever sent).
        #[arg(long)]
        sandbox: bool,
    },
    /// Check the configuration and the files it names, then print a one-line summary.
    CheckConfig,
    /// Run the DLP scanner on a message file, or evaluate it on a labelled corpus.
    Dlp {
        #[command(subcommand)]
        action: dlp::DlpAction,
    },
    /// Explain policy decisions for a message file.
    Policy {
        #[command(subcommand)]
        action: dlp::PolicyAction,
    },
    /// Verify or export the tamper-evident audit trail (daemon stopped).
    Audit {
        #[command(subcommand)]
        action: audit::AuditAction,
    },
    /// Manage SMTP AUTH users (passwords are read from stdin or a prompt, never arguments).
    User {
        #[command(subcommand)]
        action: user::UserAction,
    },
    /// Inspect and manage the spool queue of the running daemon.
    Queue {
        #[command(subcommand)]
        action: queue::QueueAction,
    },
    /// Manage master keys (generate, rotate, list, rewrap).
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Inspect and release or delete quarantined messages.
    Quarantine {
        #[command(subcommand)]
        action: quarantine::QuarantineAction,
    },
    /// Secure portal messages (list, show, revoke, extend, resend).
    Portal {
        #[command(subcommand)]
        action: portal::PortalAction,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        action: dkim::DkimAction,
    },
    /// Keys for the HTTPS submission API.
    #[command(name = "api-key")]
    ApiKey {
        #[command(subcommand)]
        action: api_key::ApiKeyAction,
    },
    /// Hold outbound delivery for an identity or everything (breach response).
    Freeze {
        #[command(subcommand)]
        action: freeze::FreezeAction,
    },
    /// Ask the running daemon to re-read its configuration (as SIGHUP does) and say
    /// whether it took it.
    Reload,
    /// Is the daemon running, and how full is its queue.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Outbound TLS diagnostics.
    Tls {
        #[command(subcommand)]
        action: tls::TlsAction,
    },
    /// The MTA-STS policy cache.
    Sts {
        #[command(subcommand)]
        action: sts::StsAction,
    },
    /// SMTP TLS reports (RFC 8460) to recipient domains.
    Tlsrpt {
        #[command(subcommand)]
        action: tlsrpt::TlsRptAction,
    },
}

/// Errors a command reports: one line, then a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Server(#[from] crate::server::ServerError),
    #[error("master key: {0}")]
    Keyring(#[from] crate::spool::KeyringError),
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("{0}")]
    Delivery(#[from] crate::delivery::DeliveryError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("api.templates_dir: {0}")]
    Template(#[from] crate::templates::TemplateError),
    #[error("{0}")]
    Usage(String),
    /// A check that ran and found a problem (exit status 1).
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Control(#[from] control_client::ClientError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Policy(_) | CliError::Template(_) => 2,
            CliError::Usage(_) => 64,
            _ => 1,
        }
    }
}

fn init_logging(cli: &Cli) {
    // hickory logs whole DNS responses (recipient domains) at WARN for unsigned zones:
    // its own lines stay at error level unless RUST_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},hickory_proto=error,hickory_resolver=error",
            cli.log_level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phigate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Serve { sandbox } => {
            init_logging(&cli);
            let (cfg, path) = if *sandbox {
                let cfg = Config::from_str(config::SANDBOX_TOML, "(embedded sandbox.toml)")?;
                (cfg, None)
            } else {
                // Files are checked by the server after first-run setup.
                (Config::read(&cli.config)?, Some(cli.config.clone()))
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::server::run(cfg, path))?;
            Ok(())
        }
        Command::CheckConfig => {
            let cfg = Config::load(&cli.config)?;
            let mut summary = cfg.summary();
            if let Some(p) = &cfg.policy.file {
                let policy = crate::policy::Policy::load(p)?;
                if let (Some(rule), None) = (policy.uses_portal(), &cfg.portal) {
                    return Err(config::ConfigError::Invalid {
                        file: p.display().to_string(),
                        key: format!("rule `{rule}`.action"),
                        message: format!("\"portal\" needs a [portal] section in {}", cfg.source),
                    }
                    .into());
                }
                summary.push_str(&format!(
                    ", policy {} ({:?} mode)",
                    p.display(),
                    policy.mode()
                ));
            }
            if let Some(p) = &cfg.portal {
                crate::portal::check_template(p).map_err(|e| config::ConfigError::Invalid {
                    file: cfg.source.clone(),
                    key: "portal.notification_template".into(),
                    message: e.to_string(),
                })?;
                summary.push_str(&format!(", portal {}", p.public_url));
            }
            if let Some(d) = cfg.api.as_ref().and_then(|a| a.templates_dir.as_ref()) {
                let t = crate::templates::Templates::load(d)?;
                summary.push_str(&format!(", {} API templates", t.names().count()));
            }
            println!("{summary}");
            Ok(())
        }
        Command::Dlp { action } => dlp::run_dlp(&cli.config, action),
        Command::Policy { action } => dlp::run_policy(&cli.config, action),
        Command::User { action } => user::run(&cli.config, action),
        Command::Queue { action } => queue::run(&cli.config, action),
        Command::Keys { action } => keys::run(&cli.config, action),
        Command::Quarantine { action } => quarantine::run(&cli.config, action),
        Command::Status { json } => control_client::status(&cli.config, *json),
        Command::Reload => {
            let cfg = control_client::load_config(&cli.config)?;
            let answer: String = control_client::call(&cfg, &crate::control::Request::Reload)?;
            println!("{answer}");
            Ok(())
        }
        Command::Tls { action } => tls::run(&cli.config, action),
        Command::Sts { action } => sts::run(&cli.config, action),
        Command::Tlsrpt { action } => tlsrpt::run(&cli.config, action),
        Command::Audit { action } => audit::run(&cli.config, action),
        Command::Freeze { action } => freeze::run_freeze(&cli.config, action),
        Command::ApiKey { action } => api_key::run(&cli.config, action),
        Command::Dkim { action } => dkim::run(&cli.config, action),
        Command::Portal { action } => portal::run(&cli.config, action),
    }
}
