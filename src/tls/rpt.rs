//! RFC 8460 SMTP TLS Reporting vocabulary: the `_smtp._tls` TXT record, the result and
//! policy types a report uses, and how a failed handshake maps to a result type. Pure:
//! no I/O, shared by `tls check` (delivery) and the report builder (`tlsrpt`).

use serde::{Deserialize, Serialize};

/// An RFC 8460 §4.3 result type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// An RFC 8460 §4.4 policy type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Tlsa,
    Sts,
    NoPolicyFound,
}

/// Where a report goes (RFC 8460 §3: `mailto:` or `https:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "to", rename_all = "lowercase")]
pub enum Rua {
    /// The address, `%`-decoded, without `mailto:` or any `?` header part.
    Mailto(String),
    /// The whole URI.
    Https(String),
}

/// A parsed `_smtp._tls` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub rua: Vec<Rua>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a TLS-RPT record (does not start with v=TLSRPTv1)")]
    NotTlsRpt,
    #[error("no rua= field")]
    NoRua,
    #[error("no usable rua URI (only mailto: and https: are supported)")]
    NoUsableRua,
}

/// The DNS name of `domain`'s TLS-RPT record.
pub fn record_name(domain: &str) -> String {
    format!("_smtp._tls.{}", domain.trim_end_matches('.'))
}

/// The one TLS-RPT record among a name's TXT strings (RFC 8460 §3: records not starting
/// with `v=TLSRPTv1` are ignored; more than one valid record means none).
pub fn find_record(txts: &[String]) -> Option<&str> {
    let mut found = txts.iter().filter(|t| is_tlsrpt(t));
    match (found.next(), found.next()) {
        (Some(one), None) => Some(one.as_str()),
        _ => None,
    }
}

fn is_tlsrpt(txt: &str) -> bool {
    let mut fields = txt.split(';');
    fields
        .next()
        .is_some_and(|v| v.trim().replace(' ', "") == "v=TLSRPTv1")
}

/// Parses one TXT string: `v=TLSRPTv1; rua=mailto:a@b,https://c/d`. Unknown fields are
/// ignored (RFC 8460 §3); URIs of other schemes are skipped.
pub fn parse_record(txt: &str) -> Result<Record, RecordError> {
    if !is_tlsrpt(txt) {
        return Err(RecordError::NotTlsRpt);
    }
    let rua = txt
        .split(';')
        .skip(1)
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("rua"))
        .map(|(_, v)| v)
        .ok_or(RecordError::NoRua)?;
    let rua: Vec<Rua> = rua.split(',').filter_map(parse_uri).collect();
    if rua.is_empty() {
        return Err(RecordError::NoUsableRua);
    }
    Ok(Record { rua })
}

fn parse_uri(raw: &str) -> Option<Rua> {
    let uri = raw.trim();
    let (scheme, rest) = uri.split_once(':')?;
    if scheme.eq_ignore_ascii_case("mailto") {
        let addr = percent_decode(rest.split('?').next()?)?;
        let (local, domain) = addr.rsplit_once('@')?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && !"<>\"(),;:\\[]".contains(c))
        };
        (plain(local) && plain(domain)).then_some(Rua::Mailto(addr))
    } else if scheme.eq_ignore_ascii_case("https") {
        let authority = rest.strip_prefix("//")?;
        let ok = !authority.is_empty()
            && !authority.starts_with('/')
            && uri.chars().all(|c| c.is_ascii_graphic());
        ok.then(|| Rua::Https(uri.to_string()))
    } else {
        None
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The result type of a failed TLS handshake (RFC 8460 §4.3.2). DANE verifier failures
/// are `tlsa-invalid` unless they are about names.
pub fn classify_handshake(e: &rustls::Error) -> ResultType {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => ResultType::CertificateExpired,
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                ResultType::CertificateHostMismatch
            }
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                ResultType::CertificateNotTrusted
            }
            C::Other(other) => match other.0.downcast_ref::<super::dane::DaneError>() {
                Some(super::dane::DaneError::NameMismatch) => ResultType::CertificateHostMismatch,
                Some(_) => ResultType::TlsaInvalid,
                None => ResultType::ValidationFailure,
            },
            _ => ResultType::ValidationFailure,
        },
        _ => ResultType::ValidationFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let r =
            parse_record("v=TLSRPTv1; rua=mailto:tls%2Brpt@example.org,https://r.example/v1?x=1")
                .expect("valid");
        assert_eq!(
            r.rua,
            vec![
                Rua::Mailto("tls+rpt@example.org".into()),
                Rua::Https("https://r.example/v1?x=1".into())
            ]
        );
        let r = parse_record("v=TLSRPTv1;rua=ftp://x, mailto:a@b.example ;ext=1").expect("valid");
        assert_eq!(r.rua, vec![Rua::Mailto("a@b.example".into())]);
        assert_eq!(parse_record("v=STSv1; id=1"), Err(RecordError::NotTlsRpt));
        assert_eq!(parse_record("v=TLSRPTv1;"), Err(RecordError::NoRua));
        for bad in [
            "v=TLSRPTv1; rua=mailto:",
            "v=TLSRPTv1; rua=mailto:no-at",
            "v=TLSRPTv1; rua=mailto:a@b%ZZ",
            "v=TLSRPTv1; rua=https:",
            "v=TLSRPTv1; rua=https:///path",
            "v=TLSRPTv1; rua=http://plain.example/",
            "v=TLSRPTv1; rua=mailto:a<b>@c",
        ] {
            assert_eq!(parse_record(bad), Err(RecordError::NoUsableRua), "{bad}");
        }
        // Hostile or odd input never panics.
        for odd in [
            "",
            ";;;",
            "v=TLSRPTv1; rua=%",
            "v=TLSRPTv1; rua=mailto:%e2%82@x",
        ] {
            let _ = parse_record(odd);
        }
    }

    #[test]
    fn one_record_or_none() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            find_record(&v(&["other", "v=TLSRPTv1; rua=mailto:a@b"])),
            Some("v=TLSRPTv1; rua=mailto:a@b")
        );
        assert_eq!(
            find_record(&v(&[
                "v=TLSRPTv1; rua=mailto:a@b",
                "v=TLSRPTv1; rua=mailto:c@d"
            ])),
            None
        );
        assert_eq!(find_record(&v(&["v=TLSRPTv10; rua=mailto:a@b"])), None);
    }

    #[test]
    fn handshake_results() {
        use rustls::CertificateError as C;
        let cert = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            classify_handshake(&cert(C::Expired)),
            ResultType::CertificateExpired
        );
        assert_eq!(
            classify_handshake(&cert(C::UnknownIssuer)),
            ResultType::CertificateNotTrusted
        );
        assert_eq!(
            classify_handshake(&cert(C::NotValidForName)),
            ResultType::CertificateHostMismatch
        );
        let dane = C::Other(rustls::OtherError(std::sync::Arc::new(
            super::super::dane::DaneError::NoMatch,
        )));
        assert_eq!(classify_handshake(&cert(dane)), ResultType::TlsaInvalid);
        assert_eq!(
            classify_handshake(&rustls::Error::DecryptError),
            ResultType::ValidationFailure
        );
        assert_eq!(ResultType::DaneRequired.as_str(), "dane-required");
    }
}
