//! SMTP server side: the I/O-free protocol codec (`proto`) and the session state machine.

pub mod proto;
pub mod session;
