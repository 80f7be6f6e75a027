//! phigate: a TLS-only SMTP relay gateway for mail carrying protected health information.
//!
//! Layers (a module only uses modules from layers below it):
//! - L0 `config`, `types`, `smtp::proto`
//! - L1 `tls`, `auth`, `sandbox` (and, as they land, `message`, `dlp`, `policy`, `spool`, `audit`, `dns`)
//! - L2 `delivery`, `queue`
//! - L3 `pipeline`, `smtp::session`, `listener`
//! - L4 `server`
//! - L5 `cli`

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dlp;
pub mod dns;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod queue;
pub mod sandbox;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tls;
pub mod types;
pub mod webhook;
