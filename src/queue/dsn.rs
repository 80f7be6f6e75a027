//! Delivery status notifications (RFC 3464): a `multipart/report` that names the message,
//! the recipients, status codes and diagnostics. Never the original body, subject or
//! headers: a bounce must not carry PHI back out.

use crate::types::{Envelope, MessageId};
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

/// What happened to one recipient, for the report.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    pub address: String,
    pub orcpt: Option<(String, String)>,
    /// `failed`, `delayed` or `delivered`.
    pub action: &'static str,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// The remote reply or local reason.
    pub diagnostic: String,
    /// For `delayed`: unix seconds until which delivery is retried.
    pub retry_until: Option<u64>,
}

/// Build the DSN message for `original` (sent to its envelope sender).
pub fn build(
    reporting_host: &str,
    original_id: MessageId,
    original: &Envelope,
    rcpts: &[DsnRecipient],
) -> std::io::Result<Vec<u8>> {
    let failed = rcpts.iter().any(|r| r.action == "failed");
    let delayed = rcpts.iter().any(|r| r.action == "delayed");
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Delivery Status Notification"
    };
    let human = if failed {
        format!(
            "This is the mail system at host {reporting_host}.\r\n\r\n\
             Your message with phigate ID {original_id} could not be delivered to every recipient,\r\n\
             or you asked to be told about its delivery. Details for each recipient follow.\r\n\
             For your privacy the message content is not returned.\r\n\r\n"
        )
    } else if delayed {
        format!(
            "This is the mail system at host {reporting_host}.\r\n\r\n\
             Your message with phigate ID {original_id} has not been delivered yet to the\r\n\
             recipients below. It is still being retried; you do not need to send it again.\r\n\
             You will be told if it finally fails.\r\n\r\n"
        )
    } else {
        format!(
            "This is the mail system at host {reporting_host}.\r\n\r\n\
             Your message with phigate ID {original_id} was delivered as follows.\r\n\r\n"
        )
    };
    let mut human = human;
    for r in rcpts {
        human.push_str(&format!(
            "<{}>: {} ({}): {}\r\n",
            r.address,
            r.action,
            r.status,
            one_line(&r.diagnostic)
        ));
    }
    let arrival = time::OffsetDateTime::from_unix_timestamp(original.received_at as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let mut status =
        format!("Reporting-MTA: dns; {reporting_host}\r\nX-Phigate-Queue-ID: {original_id}\r\n");
    if let Some(envid) = &original.params.envid {
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    status.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for r in rcpts {
        status.push_str("\r\n");
        if let Some((kind, addr)) = &r.orcpt {
            status.push_str(&format!(
                "Original-Recipient: {kind}; {}\r\n",
                one_line(addr)
            ));
        }
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
            r.address,
            r.action,
            r.status,
            one_line(&r.diagnostic)
        ));
        if let Some(until) = r.retry_until.and_then(rfc2822) {
            status.push_str(&format!("Will-Retry-Until: {until}\r\n"));
        }
    }
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status),
        ],
    );
    MessageBuilder::new()
        // Our own name, not the machine's: the DSN must not reveal internal host names.
        .message_id(format!("dsn.{original_id}@{reporting_host}"))
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{reporting_host}"),
        ))
        .to(original.mail_from.clone())
        .subject(subject)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
}

fn rfc2822(secs: u64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?)
        .ok()?
        .format(&time::format_description::well_known::Rfc2822)
        .ok()
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// The RFC 3463 status inside a reply text such as `550 5.1.1 no such user`.
pub fn status_of(reply: &str, fallback: &str) -> String {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|s| {
            let p: Vec<&str> = s.split('.').collect();
            p.len() == 3
                && p.iter()
                    .all(|x| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit()))
        })
        .unwrap_or(fallback)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{MailParams, Recipient};

    #[test]
    fn dsn_has_report_and_no_content() {
        let env = Envelope {
            mail_from: "sender@clinic.example".into(),
            params: MailParams {
                envid: Some("ENV-1".into()),
                ..MailParams::default()
            },
            recipients: vec![Recipient::new("pat@lab.example")],
            helo: "ehr".into(),
            peer_ip: "127.0.0.1".into(),
            listener: "l".into(),
            auth: None,
            tls: None,
            received_at: 1_700_000_000,
            tls_floor: None,
            session: String::new(),
        };
        let id = MessageId::new();
        let msg = build(
            "gw.example",
            id,
            &env,
            &[DsnRecipient {
                address: "pat@lab.example".into(),
                orcpt: None,
                action: "failed",
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 no such user".into(),
                retry_until: None,
            }],
        )
        .unwrap();
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status"),
            "{text}"
        );
        assert!(text.contains("Final-Recipient: rfc822; pat@lab.example"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Original-Envelope-Id: ENV-1"));
        assert!(text.contains(&id.to_string()));
        assert!(
            text.contains(&format!("Message-ID: <dsn.{id}@gw.example>")),
            "{text}"
        );
    }

    #[test]
    fn status_extraction() {
        assert_eq!(status_of("550 5.1.1 nope", "5.0.0"), "5.1.1");
        assert_eq!(status_of("451 try later", "4.0.0"), "4.0.0");
    }
}
