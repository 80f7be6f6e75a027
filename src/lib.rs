//! phigate: a TLS-only SMTP relay gateway for mail carrying protected health information.
//!
//! Layers (a module only uses modules from layers below it):
//! - L0 `config`, `types`, `smtp::proto`
//! - L1 `tls`, `message`, `dlp`, `policy`, `spool`, `audit`, `dns`
//! - L2 `delivery`, `queue`
//! - L3 `pipeline`, `smtp::session`, `listener`
//! - L4 `server`
//! - L5 `cli`

pub mod dlp;
pub mod message;
pub mod policy;
pub mod types;
