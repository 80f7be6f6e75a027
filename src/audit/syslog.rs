//! Optional RFC 5424 forwarding of each record to a SIEM, over UDP or a unix datagram
//! socket. Best effort: a lost datagram never blocks or fails an append; the chain in the
//! store is the record of truth. Person fields are sent only when configured.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use serde_json::{Map, Value};
use tracing::debug;

use super::event::AuditEvent;
use super::record::Hash;
use super::AuditError;

/// Facility `security/authorization` (10) would suit too; RFC 5424 `log audit` (13) is
/// what SIEMs expect for audit trails. Severity informational (6).
const PRI: u8 = 13 * 8 + 6;

enum Target {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

pub struct Syslog {
    target: Target,
    hostname: String,
    include_addresses: bool,
}

impl Syslog {
    /// `udp://HOST:PORT`, `unix:///dev/log` or `/dev/log`.
    pub fn open(spec: &str, hostname: &str, include_addresses: bool) -> Result<Self, AuditError> {
        let bad = || AuditError::SyslogTarget(spec.to_string());
        let target = if let Some(hp) = spec.strip_prefix("udp://") {
            let addr = hp
                .to_socket_addrs()
                .map_err(|_| bad())?
                .next()
                .ok_or_else(bad)?;
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(bind)?;
            s.set_nonblocking(true)?;
            Target::Udp(s, addr)
        } else {
            let path = spec.strip_prefix("unix://").unwrap_or(spec);
            if !path.starts_with('/') {
                return Err(bad());
            }
            let s = UnixDatagram::unbound()?;
            s.set_nonblocking(true)?;
            Target::Unix(s, PathBuf::from(path))
        };
        Ok(Syslog {
            target,
            hostname: hostname.to_string(),
            include_addresses,
        })
    }

    /// The RFC 5424 line for one record.
    pub fn format(&self, seq: u64, ts_ms: u64, ev: &AuditEvent, hash: &Hash) -> String {
        let ts = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into());
        let mut msg: Map<String, Value> = Map::new();
        msg.insert("seq".into(), seq.into());
        msg.insert("kind".into(), ev.kind.as_str().into());
        msg.insert("message_id".into(), ev.msg.map(|m| m.to_string()).into());
        msg.insert("hash".into(), hex::encode(hash).into());
        msg.extend(ev.data.clone());
        if self.include_addresses {
            msg.extend(ev.private.clone());
        }
        format!(
            "<{PRI}>1 {ts} {} phigate {} {} [audit@32473 seq=\"{seq}\"] {}",
            self.hostname,
            std::process::id(),
            ev.kind.as_str(),
            Value::Object(msg)
        )
    }

    pub fn send(&self, seq: u64, ts_ms: u64, ev: &AuditEvent, hash: &Hash) {
        let line = self.format(seq, ts_ms, ev, hash);
        let res = match &self.target {
            Target::Udp(s, a) => s.send_to(line.as_bytes(), a).map(|_| ()),
            Target::Unix(s, p) => s.send_to(line.as_bytes(), p).map(|_| ()),
        };
        if let Err(e) = res {
            debug!(error = %e, seq, "audit syslog forward failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Kind;

    #[test]
    fn udp_line_is_rfc5424_and_hides_addresses_unless_asked() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let spec = format!("udp://{}", rx.local_addr().expect("addr"));
        let ev = AuditEvent::new(Kind::Delivered)
            .field("code", 250)
            .person("recipient", "pat@example.org");
        let s = Syslog::open(&spec, "gw.test", false).expect("open");
        s.send(7, 0, &ev, &[0u8; 32]);
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).expect("datagram");
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            line.starts_with("<110>1 1970-01-01T00:00:00Z gw.test phigate "),
            "{line}"
        );
        assert!(
            line.contains("seq=\"7\"") && line.contains("\"code\":250"),
            "{line}"
        );
        assert!(!line.contains("pat@example.org"), "{line}");
        let with = Syslog::open(&spec, "gw.test", true).expect("open");
        assert!(with
            .format(7, 0, &ev, &[0u8; 32])
            .contains("pat@example.org"));
        assert!(Syslog::open("tcp://x", "h", false).is_err());
    }
}
