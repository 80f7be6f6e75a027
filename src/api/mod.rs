//! The HTTPS submission API (L3): a second front end on the same pipeline as SMTP.
//! `keys` is the API key store (`phigate api-key`).

pub mod keys;
