//! Which audit records become events, and what each event says. Extend [`event_type`]
//! (and [`clear_data`]) for new kinds, the portal's `message.portal`, `message.picked_up` and `message.revoked`
//! among them.

use serde_json::{Map, Value};

use crate::audit::{AuditEvent, Kind};

/// The event type for an audit kind, or None when the kind is not a state change.
pub fn event_type(ev: &AuditEvent) -> Option<&'static str> {
    Some(match ev.kind {
        Kind::Spooled => {
            if ev.data.get("quarantined").and_then(Value::as_bool) == Some(true) {
                "message.quarantined"
            } else {
                "message.queued"
            }
        }
        Kind::Deferred => "message.deferred",
        Kind::Delivered => "message.delivered",
        Kind::Bounced => "message.bounced",
        Kind::Expired => "message.expired",
        Kind::Quarantine => "message.quarantined",
        Kind::Release => "message.released",
        Kind::Delete => "message.deleted",
        Kind::SecurityAlert => "security.alert",
        Kind::PortalNotified => "message.portal",
        Kind::PortalPickedUp => "message.picked_up",
        Kind::PortalExpired => "message.expired",
        Kind::PortalRevoked => "message.revoked",
        _ => return None,
    })
}

/// Clear facts kept from the audit event: machine facts only (codes, TLS, rule names,
/// alert counts); never addresses or remote text.
const CLEAR: &[&str] = &[
    "next_attempt",
    "code",
    "enhanced",
    "status",
    "rule",
    "mx_host",
    "ip",
    "tls_version",
    "cipher",
    "peer_cert_sha256",
    "method",
    "dane",
    "mta_sts",
    "alert",
    "identity",
    "counts",
    "quarantined",
    "portal_id",
    "reason",
    "expires_at",
];

pub fn clear_data(ev: &AuditEvent) -> Map<String, Value> {
    ev.data
        .iter()
        .filter(|(k, _)| CLEAR.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Person fields carried (sealed) into the event.
pub fn private_data(ev: &AuditEvent) -> Map<String, Value> {
    ["recipient", "reply"]
        .iter()
        .filter_map(|k| ev.private.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect()
}
