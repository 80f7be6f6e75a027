//! SMTP server side: the I/O-free protocol codec (`proto`) and the session (`session`): an
//! I/O-free state machine plus the driver that runs it over a stream.

pub mod proto;
pub mod session;
