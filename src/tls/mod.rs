//! TLS: the inbound server configuration (with reload) and, for delivery, the outbound
//! certificate verifiers: DANE (RFC 7672), MTA-STS policy handling (RFC 8461), WebPKI and
//! encrypt-only.

pub mod dane;
pub mod mta_sts;
pub mod peer_verify;
pub mod server;
