//! `phigate policy explain`: which rule decides for each recipient, and why.

use super::decide::{MessageContext, RcptContext, RcptVerdict};
use super::Policy;
use crate::message::TextView;

/// Explain the policy's decision for a message from `from` to `to`. The output names
/// rules, conditions, detectors and counts, never finding values.
pub fn explain(policy: &Policy, from: &str, to: &[String], raw: &[u8]) -> String {
    let view = TextView::from_bytes(raw);
    let scan = policy.scanner().scan(&view);
    let ctx = MessageContext {
        sender: from,
        recipients: to,
        auth_identity: None,
        listener: "",
        size: raw.len() as u64,
        requiretls: false,
    };
    let mut out = format!(
        "mode: {:?}\nfindings: {}\nhipaa-phi: {}\n",
        policy.mode(),
        if scan.counts.is_empty() {
            "none".to_string()
        } else {
            scan.summary()
        },
        scan.hipaa_phi
    );
    for (origin, counts) in scan.sources(true) {
        let c: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("source {origin}: {}\n", c.join(", ")));
    }
    for (i, rcpt) in to.iter().enumerate() {
        out.push_str(&format!("\nrecipient {rcpt}:\n"));
        let rctx = RcptContext {
            sender: from,
            auth_identity: None,
            listener: "",
            accepted_so_far: i,
        };
        if let RcptVerdict::Reject(reply) = policy.check_recipient(&rctx, rcpt) {
            out.push_str(&format!("  refused at RCPT: {reply}\n"));
            continue;
        }
        let mut decided = false;
        for rule in &policy.file.rules {
            match policy.rule_matches(rule, &ctx, rcpt, &scan, &view) {
                Some(reasons) => {
                    out.push_str(&format!(
                        "  rule `{}` matches -> {}\n",
                        rule.name,
                        rule.action.as_str()
                    ));
                    for r in reasons {
                        out.push_str(&format!("    - {r}\n"));
                    }
                    decided = true;
                    break;
                }
                None => out.push_str(&format!("  rule `{}` does not match\n", rule.name)),
            }
        }
        if !decided {
            out.push_str(&format!(
                "  default -> {}\n",
                policy.file.default.action.as_str()
            ));
        }
    }
    let d = policy.evaluate(&ctx, &scan, &view);
    for r in &d.recipients {
        if r.outcome.action == super::Action::Portal && d.mode == crate::dlp::Mode::Enforce {
            out.push_str(&format!(
                "\nrecipient {} goes to the secure portal (rule `{}`): a PHI-free notification, pickup over HTTPS after a one-time code\n",
                r.recipient,
                r.outcome.rule.as_deref().unwrap_or("default")
            ));
        }
    }
    out.push_str(&format!(
        "\nmessage outcome: {} (reply: {})\n",
        d.enforced.action.as_str(),
        d.reply
    ));
    if d.mode == crate::dlp::Mode::Monitor {
        out.push_str(&format!("would have: {}\n", d.would_have.action.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_per_recipient_without_values() {
        let p = Policy::from_toml_str(
            "internal_domains = [\"clinic.example\"]\n[[rule]]\nname = \"ssn-out\"\naction = \"reject\"\n[rule.match]\nexternal = true\ndetectors = [\"ssn\"]\n",
            "t",
        )
        .unwrap();
        let to = vec![
            "a@clinic.example".to_string(),
            "b@partner.example".to_string(),
        ];
        let s = explain(
            &p,
            "dr@clinic.example",
            &to,
            b"Subject: x\r\n\r\nSSN 536-22-8901\r\n",
        );
        assert!(
            s.contains(
                "recipient a@clinic.example:\n  rule `ssn-out` does not match\n  default -> accept"
            ),
            "{s}"
        );
        assert!(s.contains("rule `ssn-out` matches -> reject"), "{s}");
        assert!(s.contains("- ssn: 1 value(s)"), "{s}");
        assert!(!s.contains("536-22"), "{s}");
    }
}
