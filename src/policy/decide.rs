//! Applying the policy: per recipient at RCPT time (recipient limits) and per
//! recipient at the end of DATA (ordered content rules, first match wins).

use super::glob::{address_matches, domain_in, domain_of, glob};
use super::{Action, ActionSpec, Match, Policy, Rule, TlsLevel};
use crate::dlp::{Confidence, Mode, ScanResult};
use crate::message::{Source, TextView};
use crate::types::Reply;
use serde::Serialize;

/// What is known when a `RCPT TO` arrives.
#[derive(Debug, Clone, Copy)]
pub struct RcptContext<'a> {
    pub sender: &'a str,
    pub auth_identity: Option<&'a str>,
    pub listener: &'a str,
    /// Recipients already accepted in this transaction.
    pub accepted_so_far: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    Reject(Reply),
}

/// What is known at the end of DATA.
#[derive(Debug, Clone, Copy)]
pub struct MessageContext<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub auth_identity: Option<&'a str>,
    pub listener: &'a str,
    pub size: u64,
    pub requiretls: bool,
}

/// The result of the rules for one recipient (or the combination).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub action: Action,
    /// The rule that decided; `None` means the `[default]`.
    pub rule: Option<String>,
    pub tag: bool,
    pub require_tls: Option<TlsLevel>,
    pub redact_subject: Option<String>,
    /// Why the rule matched (condition descriptions; never data values).
    pub reasons: Vec<String>,
}

impl Outcome {
    fn from_spec(spec: &ActionSpec, rule: Option<&str>, reasons: Vec<String>) -> Outcome {
        Outcome {
            action: spec.action,
            rule: rule.map(str::to_string),
            tag: spec.tag || spec.action == Action::Tag,
            require_tls: spec.require_tls,
            redact_subject: spec.redact_subject.clone(),
            reasons,
        }
    }

    fn rule_label(&self) -> &str {
        self.rule.as_deref().unwrap_or("default")
    }

    /// Merge two outcomes: the stricter action (and its rule), the higher TLS level,
    /// any tag or redaction.
    fn strictest(mut self, other: &Outcome) -> Outcome {
        if other.action > self.action {
            self.action = other.action;
            self.rule = other.rule.clone();
            self.reasons = other.reasons.clone();
        }
        self.tag |= other.tag;
        self.require_tls = self.require_tls.max(other.require_tls);
        if self.redact_subject.is_none() {
            self.redact_subject = other.redact_subject.clone();
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientDecision {
    pub recipient: String,
    pub outcome: Outcome,
}

/// The end-of-DATA decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub mode: Mode,
    /// What the rules say for each recipient.
    pub recipients: Vec<RecipientDecision>,
    /// What the policy would do to the message as a whole (strictest of the above).
    pub would_have: Outcome,
    /// What is actually done: `would_have` in enforce mode; in monitor mode at most a
    /// tag (no rejection, quarantine, redaction or TLS change).
    pub enforced: Outcome,
    /// Recipients got different actions but one SMTP transaction cannot be split.
    pub unsplittable: bool,
    /// The reply to the end of DATA.
    pub reply: Reply,
    /// Value for the `X-Phigate-DLP` header when one is to be added.
    pub tag_header: Option<String>,
}

impl Decision {
    pub fn is_reject(&self) -> bool {
        self.enforced.action == Action::Reject
    }
    pub fn is_quarantine(&self) -> bool {
        self.enforced.action == Action::Quarantine
    }
}

impl Policy {
    fn is_internal(&self, addr: &str) -> bool {
        domain_in(&self.file.internal_domains, &domain_of(addr))
    }

    /// RCPT-time limits from `[recipients]`; applied in monitor mode too (they are
    /// routing policy, not content inspection).
    pub fn check_recipient(&self, ctx: &RcptContext<'_>, rcpt: &str) -> RcptVerdict {
        let lim = &self.file.recipients;
        let refuse = |why: &str| {
            RcptVerdict::Reject(Reply::new(
                550,
                "5.7.1",
                format!("Recipient refused by policy ({why})"),
            ))
        };
        if lim.max_recipients.is_some_and(|m| ctx.accepted_so_far >= m) {
            return RcptVerdict::Reject(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        let domain = domain_of(rcpt);
        if domain_in(&lim.blocked_domains, &domain) {
            return refuse("blocked domain");
        }
        let internal = self.is_internal(rcpt);
        if lim.deny_external && !internal {
            return refuse("external recipients not permitted");
        }
        if !lim.allowed_domains.is_empty() && !internal && !domain_in(&lim.allowed_domains, &domain)
        {
            return refuse("domain not on the allowed list");
        }
        RcptVerdict::Accept
    }

    /// Evaluate the content rules for every recipient and combine the outcomes.
    pub fn evaluate(
        &self,
        ctx: &MessageContext<'_>,
        scan: &ScanResult,
        view: &TextView,
    ) -> Decision {
        let recipients: Vec<RecipientDecision> = ctx
            .recipients
            .iter()
            .map(|r| RecipientDecision {
                recipient: r.clone(),
                outcome: self.outcome_for(ctx, r, scan, view),
            })
            .collect();
        let mut would_have = recipients
            .iter()
            .map(|r| r.outcome.clone())
            .reduce(|a, b| a.strictest(&b))
            .unwrap_or_else(|| {
                Outcome::from_spec(&self.file.default, None, vec!["default".into()])
            });
        // Portal is per-recipient routing: it mixes with accept and tag in one message.
        let kind = |a: Action| {
            if a <= Action::Portal {
                Action::Accept
            } else {
                a
            }
        };
        let unsplittable = recipients
            .windows(2)
            .any(|w| kind(w[0].outcome.action) != kind(w[1].outcome.action));
        let mode = self.mode();
        let enforced = match mode {
            Mode::Enforce => would_have.clone(),
            Mode::Monitor => Outcome {
                action: if would_have.action > Action::Accept || !scan.findings.is_empty() {
                    Action::Tag
                } else {
                    Action::Accept
                },
                rule: would_have.rule.clone(),
                tag: would_have.action > Action::Accept || !scan.findings.is_empty(),
                require_tls: None,
                redact_subject: None,
                reasons: would_have.reasons.clone(),
            },
        };
        if enforced.action == Action::Tag {
            would_have.tag = true;
        }
        let reply = reply_for(&enforced, unsplittable && mode == Mode::Enforce);
        let tag_header = (enforced.tag || enforced.action == Action::Tag).then(|| {
            let mut v = if scan.counts.is_empty() {
                "none".to_string()
            } else {
                scan.summary()
            };
            if mode == Mode::Monitor {
                v.push_str(&format!(
                    "; monitor; would={}; rule={}",
                    would_have.action.as_str(),
                    would_have.rule_label()
                ));
            }
            v
        });
        Decision {
            mode,
            recipients,
            would_have,
            enforced,
            unsplittable,
            reply,
            tag_header,
        }
    }

    fn outcome_for(
        &self,
        ctx: &MessageContext<'_>,
        rcpt: &str,
        scan: &ScanResult,
        view: &TextView,
    ) -> Outcome {
        for rule in &self.file.rules {
            if let Some(reasons) = self.rule_matches(rule, ctx, rcpt, scan, view) {
                return Outcome::from_spec(&rule.spec(), Some(&rule.name), reasons);
            }
        }
        Outcome::from_spec(&self.file.default, None, vec!["no rule matched".into()])
    }

    /// `Some(reasons)` if every condition of the rule holds for this recipient.
    pub(super) fn rule_matches(
        &self,
        rule: &Rule,
        ctx: &MessageContext<'_>,
        rcpt: &str,
        scan: &ScanResult,
        view: &TextView,
    ) -> Option<Vec<String>> {
        let m: &Match = &rule.when;
        let mut why = Vec::new();
        if !m.auth.is_empty() {
            let id = ctx.auth_identity?;
            let p = m.auth.iter().find(|p| glob(p, id))?;
            why.push(format!("authenticated identity matches `{p}`"));
        }
        if let Some(unauth) = m.unauthenticated {
            if ctx.auth_identity.is_none() != unauth {
                return None;
            }
            why.push(
                if unauth {
                    "unauthenticated"
                } else {
                    "authenticated"
                }
                .into(),
            );
        }
        if !m.listener.is_empty() {
            let p = m.listener.iter().find(|p| glob(p, ctx.listener))?;
            why.push(format!("listener matches `{p}`"));
        }
        if !m.sender.is_empty() {
            let p = m.sender.iter().find(|p| address_matches(p, ctx.sender))?;
            why.push(format!("sender matches `{p}`"));
        }
        if !m.recipient.is_empty() {
            let p = m.recipient.iter().find(|p| address_matches(p, rcpt))?;
            why.push(format!("recipient matches `{p}`"));
        }
        if let Some(ext) = m.external {
            if self.is_internal(rcpt) == ext {
                return None;
            }
            why.push(
                if ext {
                    "external recipient"
                } else {
                    "internal recipient"
                }
                .into(),
            );
        }
        let default_conf = m.min_confidence.unwrap_or(Confidence::Medium);
        let mut qualifying: Vec<(&str, Confidence)> = Vec::new();
        if !m.detectors.is_empty() {
            for d in &m.detectors {
                let conf = d.min_confidence(default_conf);
                let n = scan.count_at_least(d.name(), conf);
                if n >= d.min_count() {
                    why.push(format!(
                        "{}: {n} value(s) at {}+ (needs {})",
                        d.name(),
                        conf.as_str(),
                        d.min_count()
                    ));
                    qualifying.push((d.name(), conf));
                }
            }
            if qualifying.is_empty() {
                return None;
            }
        }
        if let Some(want) = m.hipaa_phi {
            if scan.hipaa_phi != want {
                return None;
            }
            why.push(format!("hipaa-phi is {want}"));
        }
        if let Some(want) = m.in_subject {
            let in_subject = scan.findings.iter().any(|f| {
                f.location.source == Source::Subject
                    && if qualifying.is_empty() {
                        f.confidence >= default_conf
                    } else {
                        qualifying
                            .iter()
                            .any(|(n, c)| f.detector == *n && f.confidence >= *c)
                    }
            });
            if in_subject != want {
                return None;
            }
            why.push(
                if want {
                    "finding in subject"
                } else {
                    "no finding in subject"
                }
                .into(),
            );
        }
        if !m.attachment_type.is_empty() {
            let p = m
                .attachment_type
                .iter()
                .find(|p| view.attachments.iter().any(|a| glob(p, &a.content_type)))?;
            why.push(format!("attachment type matches `{p}`"));
        }
        if !m.attachment_name.is_empty() {
            let p = m.attachment_name.iter().find(|p| {
                view.attachments
                    .iter()
                    .any(|a| a.name.as_deref().is_some_and(|n| glob(p, n)))
            })?;
            why.push(format!("attachment name matches `{p}`"));
        }
        if let Some(min) = m.min_size {
            if ctx.size < min {
                return None;
            }
            why.push(format!("size >= {min}"));
        }
        if let Some(max) = m.max_size {
            if ctx.size > max {
                return None;
            }
            why.push(format!("size <= {max}"));
        }
        if let Some(want) = m.requiretls {
            if ctx.requiretls != want {
                return None;
            }
            why.push(format!("requiretls is {want}"));
        }
        if why.is_empty() {
            why.push("rule has no conditions".into());
        }
        Some(why)
    }
}

fn reply_for(o: &Outcome, unsplittable: bool) -> Reply {
    let note = if unsplittable {
        " (recipients differ but the message cannot be split: strictest outcome applied)"
    } else {
        ""
    };
    match o.action {
        Action::Reject => Reply::new(
            550,
            "5.7.1",
            format!("Message refused by policy {}{note}", o.rule_label()),
        ),
        Action::Quarantine => Reply::new(
            250,
            "2.0.0",
            format!(
                "Message accepted and held for review by policy {}{note}",
                o.rule_label()
            ),
        ),
        Action::Accept | Action::Tag | Action::Portal => {
            Reply::new(250, "2.0.0", format!("Message accepted{note}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::Scanner;

    const POLICY: &str = r#"
internal_domains = ["clinic.example", "*.clinic.example"]

[recipients]
blocked_domains = ["blocked.example"]
max_recipients = 3

[default]
action = "accept"

[[rule]]
name = "ssn-external"
action = "reject"
[rule.match]
external = true
detectors = [{ name = "ssn", min_count = 1, min_confidence = "medium" }]

[[rule]]
name = "phi-internal"
action = "tag"
require_tls = "verify"
[rule.match]
external = false
hipaa_phi = true

[[rule]]
name = "subject-phi"
action = "accept"
redact_subject = "[redacted]"
[rule.match]
in_subject = true
detectors = ["ssn", "mbi"]

[[rule]]
name = "big-spreadsheets"
action = "quarantine"
[rule.match]
attachment_name = ["*.xlsx"]
"#;

    fn policy(extra: &str) -> Policy {
        Policy::from_toml_str(&format!("{POLICY}\n{extra}"), "t").unwrap()
    }

    fn decide(p: &Policy, raw: &str, rcpts: &[&str]) -> Decision {
        let view = TextView::from_bytes(raw.as_bytes());
        let scan = p.scanner().scan(&view);
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        let ctx = MessageContext {
            sender: "dr@clinic.example",
            recipients: &rcpts,
            auth_identity: Some("dr"),
            listener: "submission",
            size: raw.len() as u64,
            requiretls: false,
        };
        p.evaluate(&ctx, &scan, &view)
    }

    #[test]
    fn rcpt_limits() {
        let p = policy("");
        let ctx = RcptContext {
            sender: "a@clinic.example",
            auth_identity: None,
            listener: "smtp",
            accepted_so_far: 0,
        };
        assert_eq!(
            p.check_recipient(&ctx, "x@partner.example"),
            RcptVerdict::Accept
        );
        match p.check_recipient(&ctx, "x@BLOCKED.example") {
            RcptVerdict::Reject(r) => assert_eq!(
                r.to_string(),
                "550 5.7.1 Recipient refused by policy (blocked domain)"
            ),
            v => panic!("{v:?}"),
        }
        let full = RcptContext {
            accepted_so_far: 3,
            ..ctx
        };
        assert!(
            matches!(p.check_recipient(&full, "x@clinic.example"), RcptVerdict::Reject(r) if r.code == 452)
        );
    }

    #[test]
    fn deny_external_and_allow_list() {
        let p = Policy::from_toml_str(
            "internal_domains = [\"clinic.example\"]\n[recipients]\nallowed_domains = [\"lab.example\"]\n",
            "t",
        )
        .unwrap();
        let ctx = RcptContext {
            sender: "",
            auth_identity: None,
            listener: "smtp",
            accepted_so_far: 0,
        };
        assert_eq!(
            p.check_recipient(&ctx, "a@lab.example"),
            RcptVerdict::Accept
        );
        assert_eq!(
            p.check_recipient(&ctx, "a@clinic.example"),
            RcptVerdict::Accept
        );
        assert!(matches!(
            p.check_recipient(&ctx, "a@other.example"),
            RcptVerdict::Reject(_)
        ));
        let p = Policy::from_toml_str(
            "internal_domains = [\"clinic.example\"]\n[recipients]\ndeny_external = true\n",
            "t",
        )
        .unwrap();
        assert!(matches!(
            p.check_recipient(&ctx, "a@lab.example"),
            RcptVerdict::Reject(_)
        ));
    }

    #[test]
    fn reject_names_rule_and_split_is_explained() {
        let p = policy("");
        let raw = "Subject: hi\r\n\r\nSSN 536-22-8901\r\n";
        let d = decide(&p, raw, &["a@partner.example"]);
        assert_eq!(
            d.reply.to_string(),
            "550 5.7.1 Message refused by policy ssn-external"
        );
        assert!(!d.reply.text.contains("8901"));
        let d = decide(&p, raw, &["a@clinic.example", "b@partner.example"]);
        assert_eq!(d.recipients[0].outcome.action, Action::Accept);
        assert_eq!(d.recipients[1].outcome.action, Action::Reject);
        assert!(d.unsplittable && d.is_reject());
        assert!(d.reply.text.contains("cannot be split"), "{}", d.reply);
    }

    #[test]
    fn tag_with_tls_and_subject_redaction_and_quarantine() {
        let p = policy("");
        let d = decide(
            &p,
            "Subject: x\r\n\r\nPatient SSN 536-22-8901 diagnosed with diabetes\r\n",
            &["a@clinic.example"],
        );
        assert_eq!(d.enforced.action, Action::Tag);
        assert_eq!(d.enforced.require_tls, Some(TlsLevel::Verify));
        assert_eq!(d.tag_header.as_deref(), Some("ssn=1"));
        let d = decide(
            &p,
            "Subject: MBI 1EG4-TE5-MK73\r\n\r\nhello\r\n",
            &["a@partner.example"],
        );
        assert_eq!(d.enforced.rule.as_deref(), Some("subject-phi"));
        assert_eq!(d.enforced.redact_subject.as_deref(), Some("[redacted]"));
        let raw = "Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/octet-stream; name=\"a.xlsx\"\r\n\r\nxx\r\n--B--\r\n";
        let d = decide(&p, raw, &["a@partner.example"]);
        assert!(d.is_quarantine());
        assert_eq!(d.reply.code, 250);
    }

    #[test]
    fn monitor_mode_only_tags_but_records() {
        let p = policy("[dlp]\nmode = \"monitor\"\n");
        let d = decide(
            &p,
            "Subject: hi\r\n\r\nSSN 536-22-8901\r\n",
            &["a@partner.example"],
        );
        assert_eq!(d.would_have.action, Action::Reject);
        assert_eq!(d.enforced.action, Action::Tag);
        assert_eq!(d.reply.code, 250);
        assert_eq!(
            d.tag_header.as_deref(),
            Some("ssn=1; monitor; would=reject; rule=ssn-external")
        );
    }

    #[test]
    fn clean_message_gets_default() {
        let p = policy("");
        let d = decide(
            &p,
            "Subject: lunch\r\n\r\nSee you at noon.\r\n",
            &["a@partner.example"],
        );
        assert_eq!(d.enforced.action, Action::Accept);
        assert_eq!(d.enforced.rule, None);
        assert!(d.tag_header.is_none());
    }

    #[test]
    fn identity_listener_sender_size_requiretls_conditions() {
        let p = Policy::from_toml_str(
            r#"
[[rule]]
name = "r"
action = "quarantine"
[rule.match]
auth = ["dr*"]
listener = ["submission"]
sender = ["clinic.example"]
recipient = ["*@partner.example"]
min_size = 10
max_size = 100000
requiretls = false
"#,
            "t",
        )
        .unwrap();
        let d = decide(
            &p,
            "Subject: a\r\n\r\nhello there\r\n",
            &["x@partner.example", "y@other.example"],
        );
        assert_eq!(d.recipients[0].outcome.action, Action::Quarantine);
        assert_eq!(d.recipients[1].outcome.action, Action::Accept);
        assert!(d.recipients[0]
            .outcome
            .reasons
            .iter()
            .any(|r| r.contains("listener")));
        let _ = Scanner::new(&Default::default());
    }
}
