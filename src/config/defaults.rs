//! Default values of optional configuration keys.
use super::*;

pub fn webhook_events() -> Vec<WebhookEvent> {
    WebhookEvent::ALL.to_vec()
}
pub fn webhook_attempts() -> u32 {
    8
}
pub fn mx_port() -> u16 {
    25
}
pub fn smarthost_port() -> u16 {
    587
}
pub fn tls_level() -> TlsLevel {
    TlsLevel::Auto
}
pub fn connect_timeout() -> Seconds {
    Seconds(30)
}
pub fn sts_fetch_timeout() -> Seconds {
    Seconds(60)
}
pub fn per_destination_connections() -> usize {
    4
}
pub fn max_outbound_connections() -> usize {
    100
}
pub fn max_message_size() -> ByteSize {
    ByteSize(25 * 1024 * 1024)
}
pub fn max_line_length() -> ByteSize {
    ByteSize(64 * 1024)
}
pub fn max_recipients() -> usize {
    100
}
pub fn max_connections() -> usize {
    1000
}
pub fn max_connections_per_ip() -> usize {
    50
}
pub fn command_timeout() -> Seconds {
    Seconds(300)
}
pub fn data_timeout() -> Seconds {
    Seconds(180)
}
pub fn tls_handshake_timeout() -> Seconds {
    Seconds(30)
}
pub fn shutdown_grace() -> Seconds {
    Seconds(30)
}
pub fn min_version() -> TlsVersion {
    TlsVersion::V12
}
pub fn max_auth_failures() -> u32 {
    5
}
pub fn auth_lockout() -> Seconds {
    Seconds(900)
}
pub fn retry() -> Vec<Seconds> {
    [300, 600, 1200, 2400, 3600]
        .into_iter()
        .map(Seconds)
        .collect()
}
pub fn expire() -> Seconds {
    Seconds(5 * 86400)
}
pub fn concurrency() -> usize {
    50
}
pub fn min_free() -> ByteSize {
    ByteSize(100 * 1024 * 1024)
}
/// As sendmail's `Timeout.queuewarn`.
pub fn delay_warning() -> Seconds {
    Seconds(4 * 3600)
}
pub fn metadata() -> Seconds {
    Seconds(30 * 86400)
}
pub fn head_log_interval() -> Seconds {
    Seconds(600)
}
pub fn audit_retention() -> Seconds {
    Seconds(6 * 365 * 86400)
}
pub fn events_retention() -> Seconds {
    Seconds(30 * 86400)
}

pub fn portal_after() -> Seconds {
    Seconds(3600)
}
