//! TLS: the inbound server configuration (with reload) and, for delivery, the
//! outbound verifiers.

pub mod server;
