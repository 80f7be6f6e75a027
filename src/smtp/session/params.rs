//! MAIL and RCPT parameters (RFC 1870 SIZE, 6152 BODY, 6531 SMTPUTF8, 3461 DSN,
//! 8689 REQUIRETLS, 4954 AUTH=): pure functions from the parsed list to typed values.

use super::replies;
use crate::smtp::proto::{decode_xtext, Param};
use crate::types::{BodyType, DsnRet, MailParams, Notify, Recipient, Reply};

/// The MAIL FROM parameters, or the reply refusing them.
pub(super) fn mail_params(
    params: &[Param],
    esmtp: bool,
    tls_active: bool,
    max_message_size: usize,
) -> Result<MailParams, Reply> {
    let mut p = MailParams::default();
    if !esmtp && !params.is_empty() {
        return Err(replies::PARAMS_NEED_EHLO.into());
    }
    for Param { key, value } in params {
        let v = value.as_deref();
        match (key.as_str(), v) {
            ("SIZE", Some(v)) => {
                let n: u64 = v.parse().map_err(|_| replies::invalid_param("SIZE"))?;
                if n > max_message_size as u64 {
                    return Err(replies::SIZE_EXCEEDED.into());
                }
                p.size = Some(n);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => p.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                p.body = BodyType::EightBitMime
            }
            ("BODY", _) => return Err(replies::UNSUPPORTED_BODY.into()),
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => p.ret = Some(DsnRet::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => p.ret = Some(DsnRet::Hdrs),
            ("ENVID", Some(v)) => {
                let id = decode_xtext(v)
                    .filter(|s| s.len() <= 100)
                    .ok_or_else(|| replies::invalid_param("ENVID"))?;
                p.envid = Some(id);
            }
            // RFC 8689: only meaningful, and only advertised, inside TLS.
            ("REQUIRETLS", None) if tls_active => p.requiretls = true,
            // RFC 4954 AUTH= on MAIL: accepted and not trusted.
            ("AUTH", Some(_)) => {}
            _ => return Err(replies::unsupported_param(key)),
        }
    }
    Ok(p)
}

/// Apply the RCPT TO parameters to `rcpt`, or return the reply refusing them.
pub(super) fn rcpt_params(rcpt: &mut Recipient, params: &[Param]) -> Result<(), Reply> {
    for Param { key, value } in params {
        match (key.as_str(), value.as_deref()) {
            ("NOTIFY", Some(v)) => {
                rcpt.notify = Some(parse_notify(v).ok_or_else(|| replies::invalid_param("NOTIFY"))?)
            }
            ("ORCPT", Some(v)) => {
                let parsed = v
                    .split_once(';')
                    .and_then(|(t, a)| decode_xtext(a).map(|a| (t.to_string(), a)));
                rcpt.orcpt = Some(parsed.ok_or_else(|| replies::invalid_param("ORCPT"))?);
            }
            _ => return Err(replies::unsupported_param(key)),
        }
    }
    Ok(())
}

fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return None,
        }
    }
    // NEVER excludes the others (RFC 3461 §4.1).
    if n.never && (n.success || n.failure || n.delay) {
        return None;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(key: &str, value: Option<&str>) -> Param {
        Param {
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn mail_parameters_parse_and_refuse() {
        let p = mail_params(
            &[
                param("SIZE", Some("100")),
                param("BODY", Some("8bitmime")),
                param("SMTPUTF8", None),
                param("RET", Some("HDRS")),
                param("ENVID", Some("a+2Bb")),
                param("REQUIRETLS", None),
                param("AUTH", Some("<>")),
            ],
            true,
            true,
            1000,
        )
        .expect("valid parameters");
        assert_eq!(p.size, Some(100));
        assert_eq!(p.body, BodyType::EightBitMime);
        assert!(p.smtputf8 && p.requiretls);
        assert_eq!(p.ret, Some(DsnRet::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("a+b"));

        let refuse = |params: &[Param], esmtp, tls| mail_params(params, esmtp, tls, 1000).err();
        assert_eq!(
            refuse(&[param("SIZE", Some("1001"))], true, true),
            Some(replies::SIZE_EXCEEDED.into())
        );
        assert_eq!(
            refuse(&[param("SIZE", Some("x"))], true, true),
            Some(replies::invalid_param("SIZE"))
        );
        assert_eq!(
            refuse(&[param("SIZE", Some("1"))], false, true),
            Some(replies::PARAMS_NEED_EHLO.into())
        );
        assert_eq!(
            refuse(&[param("BODY", Some("BINARYMIME"))], true, true),
            Some(replies::UNSUPPORTED_BODY.into())
        );
        // REQUIRETLS outside TLS is not ours to promise.
        assert_eq!(
            refuse(&[param("REQUIRETLS", None)], true, false),
            Some(replies::unsupported_param("REQUIRETLS"))
        );
        assert_eq!(
            refuse(&[param("ENVID", Some(&"a".repeat(101)))], true, true),
            Some(replies::invalid_param("ENVID"))
        );
    }

    #[test]
    fn recipient_parameters_parse_and_refuse() {
        let mut r = Recipient::new("a@b");
        rcpt_params(
            &mut r,
            &[
                param("NOTIFY", Some("success,DELAY")),
                param("ORCPT", Some("rfc822;x+40y")),
            ],
        )
        .expect("valid parameters");
        let n = r.notify.expect("notify set");
        assert!(n.success && n.delay && !n.failure && !n.never);
        assert_eq!(r.orcpt, Some(("rfc822".into(), "x@y".into())));

        let mut r = Recipient::new("a@b");
        assert_eq!(
            rcpt_params(&mut r, &[param("NOTIFY", Some("NEVER,SUCCESS"))]),
            Err(replies::invalid_param("NOTIFY"))
        );
        assert_eq!(
            rcpt_params(&mut r, &[param("ORCPT", Some("no-semicolon"))]),
            Err(replies::invalid_param("ORCPT"))
        );
        assert_eq!(
            rcpt_params(&mut r, &[param("FOO", None)]),
            Err(replies::unsupported_param("FOO"))
        );
    }
}
