//! TLS for phigate: outbound peer verification (DANE, MTA-STS, encrypt-only, WebPKI).

pub mod dane;
pub mod mta_sts;
pub mod peer_verify;
