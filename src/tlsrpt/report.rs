//! The RFC 8460 §4 JSON report built from an [`Aggregate`], its gzip form, and the
//! §5.3 mail that carries it. Only what the aggregate holds goes in: policy strings, MX
//! names, addresses and counts.

use std::io::Write;

use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;
use serde_json::{json, Value};

use super::aggregate::Aggregate;
use crate::config::TlsRptSettings;

/// Unix seconds as RFC 3339 UTC (`2026-12-03T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The report for `agg` covering `[agg.start, end)`.
pub fn build(agg: &Aggregate, end: u64, report_id: &str, s: &TlsRptSettings) -> Value {
    let policies: Vec<Value> = agg
        .policies
        .iter()
        .map(|p| {
            let mut policy = json!({
                "policy-type": p.policy.kind,
                "policy-domain": agg.domain,
            });
            if !p.policy.strings.is_empty() {
                policy["policy-string"] = json!(p.policy.strings);
            }
            if !p.policy.mx_host.is_empty() {
                policy["mx-host"] = json!(p.policy.mx_host);
            }
            let details: Vec<Value> = p
                .details
                .iter()
                .map(|d| {
                    let mut row = json!({
                        "result-type": d.result,
                        "failed-session-count": d.count,
                    });
                    // Empty for a policy failure about no particular host (a fetch).
                    if !d.mx_host.is_empty() {
                        row["receiving-mx-hostname"] = json!(d.mx_host);
                    }
                    if let Some(ip) = d.sending_ip {
                        row["sending-mta-ip"] = json!(ip.to_string());
                    }
                    if let Some(ip) = d.receiving_ip {
                        row["receiving-ip"] = json!(ip.to_string());
                    }
                    row
                })
                .collect();
            let mut entry = json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": p.successes,
                    "total-failure-session-count": p.failures,
                },
            });
            if !details.is_empty() {
                entry["failure-details"] = json!(details);
            }
            entry
        })
        .collect();
    json!({
        "organization-name": s.organization_name,
        "date-range": {
            "start-datetime": rfc3339(agg.start),
            "end-datetime": rfc3339(end),
        },
        "contact-info": s.contact_info,
        "report-id": report_id,
        "policies": policies,
    })
}

pub fn gzip(report: &Value) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json)?;
    gz.finish()
}

/// What a mailed report needs besides the attachment.
pub struct MailReport<'a> {
    pub domain: &'a str,
    pub to: &'a str,
    pub report_id: &'a str,
    pub hostname: &'a str,
    pub start: u64,
    pub end: u64,
}

/// The RFC 8460 §5.3 message: `multipart/report; report-type="tlsrpt"` with a short text
/// part and the gzipped report as an `application/tlsrpt+gzip` attachment.
pub fn mail(m: &MailReport<'_>, s: &TlsRptSettings, gz: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let submitter = m.hostname;
    let filename = format!(
        "{submitter}!{}!{}!{}!{}.json.gz",
        m.domain, m.start, m.end, m.report_id
    );
    let text = format!(
        "This is an aggregate SMTP TLS report (RFC 8460) from {} for {}.\r\n\
         It covers {} to {} and is attached as gzip-compressed JSON.\r\n",
        s.organization_name,
        m.domain,
        rfc3339(m.start),
        rfc3339(m.end)
    );
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
        vec![
            MimePart::new("text/plain", text),
            MimePart::new("application/tlsrpt+gzip", gz).attachment(filename),
        ],
    );
    MessageBuilder::new()
        .message_id(format!("tlsrpt.{}@{}", m.report_id, m.hostname))
        .from(s.from.clone())
        .to(m.to.to_string())
        .subject(format!(
            "Report Domain: {} Submitter: {submitter} Report-ID: <{}>",
            m.domain, m.report_id
        ))
        .header(
            "TLS-Report-Domain",
            mail_builder::headers::raw::Raw::new(m.domain.to_string()),
        )
        .header(
            "TLS-Report-Submitter",
            mail_builder::headers::raw::Raw::new(submitter.to_string()),
        )
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .body(report)
        .write_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::observe::{TlsAttempt, TlsPolicy};
    use crate::tls::rpt::ResultType;

    #[test]
    fn report_fields() {
        let mut agg = Aggregate::new("example.org", "2026-12-03", 1_796_256_000);
        let none = TlsPolicy::none();
        agg.add(&TlsAttempt {
            domain: "example.org",
            policy: &none,
            mx_host: "mx.example.org",
            receiving_ip: Some([192, 0, 2, 1].into()),
            sending_ip: None,
            failure: Some(ResultType::CertificateExpired),
        });
        let s = crate::config::TlsRptConfig::default().settings("gw.example");
        let r = build(&agg, 1_796_342_400, "id1", &s);
        assert_eq!(r["organization-name"], "gw.example");
        assert_eq!(r["date-range"]["start-datetime"], "2026-12-03T00:00:00Z");
        assert_eq!(r["date-range"]["end-datetime"], "2026-12-04T00:00:00Z");
        let p = &r["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "no-policy-found");
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        assert_eq!(
            p["failure-details"][0]["result-type"],
            "certificate-expired"
        );
        assert_eq!(p["failure-details"][0]["receiving-ip"], "192.0.2.1");
        assert!(p["failure-details"][0].get("sending-mta-ip").is_none());
        let m = MailReport {
            domain: "example.org",
            to: "rua@example.org",
            report_id: "id1",
            hostname: "gw.example",
            start: 0,
            end: 1,
        };
        let msg = mail(&m, &s, gzip(&r).expect("gzip")).expect("mail");
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains("report-type=\"tlsrpt\""), "{text}");
        assert!(text.contains("application/tlsrpt+gzip"), "{text}");
        assert!(text.contains("TLS-Report-Domain: example.org"), "{text}");
    }
}
