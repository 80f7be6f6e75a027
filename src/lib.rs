//! phigate: a TLS-only SMTP relay gateway for mail carrying protected health information.
//!
//! Layers (a module only uses modules from layers below it; a message travels upwards
//! through them: `listener` → `smtp::session` → `pipeline` → `spool` → `queue` →
//! `delivery`):
//! - L0 `config`, `types` (IDs, envelope, per-recipient status, the one `TlsLevel`),
//!   `smtp::proto` (I/O-free codec)
//! - L1 `tls`, `https` (the HTTPS server stack), `auth`, `sandbox`, `message`, `dlp`,
//!   `notice` (the one mail type that may go without TLS), `policy`, `spool`, `audit`,
//!   `dns`, `metrics`, `webhook` (events out); then `limits`, `freeze` (containment
//!   state, revocation) and `alerts`, which use the spool, audit trail and metrics
//! - L2 `services` (the one handle on spool, audit, metrics, webhooks and clock), then
//!   `delivery` (MX → MTA-STS → DANE → TLS client; the `Transport` the queue drives),
//!   `portal` (its store and notifier; `portal::web` is L3) and `queue`
//! - L3 `pipeline` (parse → DLP → policy → spool → queue → audit), `tlsrpt` (RFC 8460
//!   reports: delivery's TLS results counted, sent by HTTPS or through the queue), the
//!   front ends (`smtp::session`, `api`, `portal::web`), `listener`, `control` (the
//!   daemon side of the control socket)
//! - L4 `server` (builds the services once, wires everything, signals, systemd notify)
//! - L5 `cli`

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod dlp;
pub mod dns;
pub mod events;
pub mod freeze;
pub mod https;
pub mod limits;
pub mod listener;
pub mod long_lines;
pub mod message;
pub mod metrics;
pub mod notice;
pub mod pipeline;
pub mod policy;
pub mod portal;
pub mod queue;
pub mod sandbox;
pub mod server;
pub mod services;
pub mod smtp;
pub mod spool;
pub mod templates;
pub mod tls;
pub mod tlsrpt;
pub mod types;
pub mod webhook;
