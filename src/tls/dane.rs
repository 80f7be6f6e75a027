//! DANE for SMTP (RFC 7672, RFC 6698/7671): TLSA matching and a rustls verifier.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (RFC 7672 §3.1.3); PKIX-TA(0),
//! PKIX-EE(1), unknown parameters and malformed digests make a record unusable. A TLSA
//! RRset without usable records authenticates nothing: the caller still requires TLS
//! (RFC 7672 §2.2, "mandatory unauthenticated TLS") but must not claim DANE.
//!
//! - DANE-EE: the leaf matches the record; no name, date or chain checks (RFC 7672 §3.1.1).
//! - DANE-TA: the trust anchor is a CA certificate from the presented chain (depth >= 1) that
//!   matches the record, or the full certificate / public key carried in a `2 0 0` /
//!   `2 1 0` record. The chain from the leaf to it is then verified by webpki (signatures,
//!   validity dates, basic constraints and path lengths, server-auth EKU if present) and the
//!   leaf must carry one of the reference identifiers (RFC 7672 §3.2.2: the TLSA base domain
//!   and the next-hop domain) as a DNS SAN.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, Der, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, OtherError};
use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

/// TLSA certificate usages that SMTP can use (RFC 7672 §3.1).
pub const USAGE_DANE_TA: u8 = 2;
pub const USAGE_DANE_EE: u8 = 3;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    /// 0 = full certificate, 1 = SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 = exact bytes, 1 = SHA-256, 2 = SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Usable for SMTP: DANE-TA/DANE-EE, known selector, known matching type and a digest
    /// of the right length.
    pub fn is_usable(&self) -> bool {
        let usage_ok = matches!(self.usage, USAGE_DANE_TA | USAGE_DANE_EE);
        let data_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage_ok && self.selector <= 1 && data_ok
    }

    /// Whether the selected part of `cert` matches this record's association data.
    fn matches_cert(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: &[u8] = match self.selector {
            0 => cert.as_ref(),
            1 => match X509Certificate::from_der(cert.as_ref()) {
                Ok((_, parsed)) => parsed.tbs_certificate.subject_pki.raw,
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => Sha256::digest(selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// How the peer was authenticated, for the per-hop audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneMethod {
    DaneEe,
    DaneTa,
}

impl DaneMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            DaneMethod::DaneEe => "dane-ee",
            DaneMethod::DaneTa => "dane-ta",
        }
    }
}

/// Which TLSA record authenticated the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaneMatch {
    pub method: DaneMethod,
    /// Index into the TLSA slice given to the matcher.
    pub record_index: usize,
    /// Chain depth of the matched certificate (0 = leaf). For a trust anchor that was not
    /// presented but carried in the record, the depth it occupies above the verified path.
    pub depth: usize,
}

/// Why DANE authentication did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DaneError {
    /// No DANE-TA/DANE-EE record with known parameters: TLS is still mandatory, but the
    /// peer is not authenticated by DANE.
    #[error("no usable TLSA records")]
    NoUsableRecords,
    #[error("server presented no certificate")]
    EmptyChain,
    #[error("no TLSA record matches the server certificate chain")]
    NoMatch,
    #[error("certificate chain to the DANE-TA trust anchor is invalid: {0}")]
    ChainInvalid(String),
    #[error("certificate names match neither the TLSA base domain nor the next-hop domain")]
    NameMismatch,
}

pub type DaneResult = Result<DaneMatch, DaneError>;

/// Matches a presented chain (leaf first) against a TLSA RRset using the ring provider's
/// signature algorithms. `reference_names` are the names the leaf must carry for DANE-TA.
pub fn match_chain(
    tlsa: &[Tlsa],
    chain: &[CertificateDer<'_>],
    reference_names: &[String],
    now: UnixTime,
) -> DaneResult {
    match_chain_with(
        &super::client::provider(),
        tlsa,
        chain,
        reference_names,
        now,
    )
}

fn match_chain_with(
    provider: &CryptoProvider,
    tlsa: &[Tlsa],
    chain: &[CertificateDer<'_>],
    reference_names: &[String],
    now: UnixTime,
) -> DaneResult {
    let usable: Vec<(usize, &Tlsa)> = tlsa
        .iter()
        .enumerate()
        .filter(|(_, record)| record.is_usable())
        .collect();
    if usable.is_empty() {
        return Err(DaneError::NoUsableRecords);
    }
    let leaf = chain.first().ok_or(DaneError::EmptyChain)?;

    // DANE-EE first: it needs no path building.
    for &(index, record) in &usable {
        if record.usage == USAGE_DANE_EE && record.matches_cert(leaf) {
            return Ok(DaneMatch {
                method: DaneMethod::DaneEe,
                record_index: index,
                depth: 0,
            });
        }
    }

    let ta_check = TaCheck {
        provider,
        chain,
        reference_names,
        now,
    };
    // Keep the most specific failure so the deferral reason is useful.
    let mut failure = DaneError::NoMatch;
    for &(index, record) in usable.iter().filter(|(_, r)| r.usage == USAGE_DANE_TA) {
        // A TA must be a CA, never the leaf itself.
        for cert in chain.iter().skip(1) {
            if record.matches_cert(cert) {
                match ta_check.verify(Anchor::Cert(cert)) {
                    Ok(depth) => return Ok(ta_match(index, depth)),
                    Err(e) => keep_specific(&mut failure, e),
                }
            }
        }
        // "2 0 0" / "2 1 0" carry the anchor itself, so the server need not send it.
        if record.matching == 0 {
            let result = if record.selector == 0 {
                let cert = CertificateDer::from(record.data.as_slice());
                ta_check.verify(Anchor::Cert(&cert))
            } else {
                ta_check.verify(Anchor::Spki(&record.data))
            };
            match result {
                Ok(depth) => return Ok(ta_match(index, depth)),
                Err(e) => keep_specific(&mut failure, e),
            }
        }
    }
    Err(failure)
}

fn keep_specific(failure: &mut DaneError, new: DaneError) {
    if new != DaneError::NoMatch {
        *failure = new;
    }
}

fn ta_match(record_index: usize, depth: usize) -> DaneMatch {
    DaneMatch {
        method: DaneMethod::DaneTa,
        record_index,
        depth,
    }
}

/// A DANE-TA trust anchor: a certificate, or a bare SubjectPublicKeyInfo from the record.
enum Anchor<'a> {
    Cert(&'a CertificateDer<'a>),
    Spki(&'a [u8]),
}

struct TaCheck<'a> {
    provider: &'a CryptoProvider,
    chain: &'a [CertificateDer<'a>],
    reference_names: &'a [String],
    now: UnixTime,
}

impl TaCheck<'_> {
    /// Verifies the chain from the leaf to `anchor`; returns the anchor's depth.
    fn verify(&self, anchor: Anchor<'_>) -> Result<usize, DaneError> {
        let anchors = match &anchor {
            Anchor::Cert(cert) => vec![webpki::anchor_from_trusted_cert(cert)
                .map_err(|e| DaneError::ChainInvalid(format!("trust anchor: {e:?}")))?],
            Anchor::Spki(spki) => spki_anchors(spki, self.chain)?,
        };

        let leaf = self.chain.first().ok_or(DaneError::EmptyChain)?;
        let end_entity = EndEntityCert::try_from(leaf)
            .map_err(|e| DaneError::ChainInvalid(format!("leaf: {e:?}")))?;
        let path = end_entity
            .verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &anchors,
                &self.chain[1..],
                self.now,
                KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|e| match e {
                // The anchor does not sign anything in this chain: it simply does not match.
                webpki::Error::UnknownIssuer => DaneError::NoMatch,
                other => DaneError::ChainInvalid(format!("{other:?}")),
            })?;
        let intermediates = path.intermediate_certificates().count();
        // Only now is the anchor known to sign this chain, so its own checks come second
        // (an unrelated record is "no match", not "bad anchor").
        let path_len_limit = match anchor {
            Anchor::Cert(cert) => check_ta_certificate(cert, self.now)?,
            Anchor::Spki(_) => None,
        };
        // webpki trust anchors carry no basic constraints, so apply the TA's own limit here.
        if path_len_limit.is_some_and(|limit| intermediates > limit) {
            return Err(DaneError::ChainInvalid(
                "path length exceeds the trust anchor's pathLenConstraint".into(),
            ));
        }

        let name_ok = self.reference_names.iter().any(|name| {
            ServerName::try_from(name.as_str())
                .is_ok_and(|name| end_entity.verify_is_valid_for_subject_name(&name).is_ok())
        });
        if !name_ok {
            return Err(DaneError::NameMismatch);
        }
        Ok(intermediates + 1)
    }
}

/// A trust-anchor certificate must be a CA (if it says) and within its validity dates.
/// Returns its pathLenConstraint.
fn check_ta_certificate(
    cert: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<Option<usize>, DaneError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| DaneError::ChainInvalid("trust anchor certificate does not parse".into()))?;
    let now = i64::try_from(now.as_secs())
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .ok_or_else(|| DaneError::ChainInvalid("clock out of range".into()))?;
    if !parsed.validity().is_valid_at(now) {
        return Err(DaneError::ChainInvalid(
            "trust anchor certificate is outside its validity period".into(),
        ));
    }
    match parsed.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => Err(DaneError::ChainInvalid(
            "trust anchor certificate is not a CA".into(),
        )),
        Ok(Some(bc)) => Ok(bc
            .value
            .path_len_constraint
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))),
        Ok(None) => Ok(None),
        Err(_) => Err(DaneError::ChainInvalid(
            "trust anchor has duplicate basic constraints".into(),
        )),
    }
}

/// Anchors for a bare public key: webpki needs a subject name, so offer the key under every
/// issuer name in the chain; only a real signature by that key can complete a path.
fn spki_anchors<'a>(
    spki: &'a [u8],
    chain: &'a [CertificateDer<'a>],
) -> Result<Vec<TrustAnchor<'a>>, DaneError> {
    let key = der_sequence_contents(spki)
        .ok_or_else(|| DaneError::ChainInvalid("TLSA public key is not DER".into()))?;
    let anchors: Vec<TrustAnchor<'a>> = chain
        .iter()
        .filter_map(|cert| {
            let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
            let issuer = der_sequence_contents(parsed.tbs_certificate.issuer.as_raw())?;
            Some(TrustAnchor {
                subject: Der::from_slice(issuer),
                subject_public_key_info: Der::from_slice(key),
                name_constraints: None,
            })
        })
        .collect();
    if anchors.is_empty() {
        return Err(DaneError::NoMatch);
    }
    Ok(anchors)
}

/// The contents of a DER SEQUENCE (webpki keeps names and keys without the outer header).
fn der_sequence_contents(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, body) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, body)
    };
    (body.len() == len).then_some(body)
}

/// rustls verifier that authenticates the server by DANE only.
///
/// Build one per connection: it holds that MX host's TLSA RRset and reference names, and
/// remembers which record matched for the per-hop record. The SNI the caller sends should
/// be the TLSA base domain (RFC 7672 §8.1); the `server_name` rustls passes in is ignored
/// in favour of `reference_names`.
#[derive(Debug)]
pub struct DaneVerifier {
    tlsa: Vec<Tlsa>,
    reference_names: Vec<String>,
    provider: Arc<CryptoProvider>,
    matched: Mutex<Option<DaneMatch>>,
}

impl DaneVerifier {
    /// Fails with [`DaneError::NoUsableRecords`] when DANE cannot authenticate anything:
    /// the caller then uses mandatory unauthenticated TLS instead.
    pub fn new(tlsa: Vec<Tlsa>, reference_names: Vec<String>) -> Result<Self, DaneError> {
        if !tlsa.iter().any(Tlsa::is_usable) {
            return Err(DaneError::NoUsableRecords);
        }
        Ok(DaneVerifier {
            tlsa,
            reference_names,
            provider: super::client::provider(),
            matched: Mutex::new(None),
        })
    }

    /// The record that authenticated the last successful handshake.
    pub fn matched(&self) -> Option<DaneMatch> {
        *self
            .matched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        match match_chain_with(
            &self.provider,
            &self.tlsa,
            &chain,
            &self.reference_names,
            now,
        ) {
            Ok(found) => {
                *self.matched.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(e)),
            ))),
        }
    }

    super::provider_handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::peer_verify::test_handshake::{handshake, server_config};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    struct Issuer {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Issuer {
        fn der(&self) -> CertificateDer<'static> {
            self.cert.der().clone()
        }
    }

    fn params(names: &[&str], common_name: &str, expired: bool) -> CertificateParams {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        params
    }

    /// A CA certificate; self-signed when `parent` is `None`.
    fn ca(name: &str, parent: Option<&Issuer>, path_len: Option<u8>, expired: bool) -> Issuer {
        let key = KeyPair::generate().expect("key");
        let mut p = params(&[], name, expired);
        p.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        let cert = match parent {
            Some(parent) => p.signed_by(&key, &parent.cert, &parent.key),
            None => p.self_signed(&key),
        }
        .expect("CA cert");
        Issuer { cert, key }
    }

    fn leaf(names: &[&str], issuer: &Issuer, expired: bool) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let cert = params(names, "leaf", expired)
            .signed_by(&key, &issuer.cert, &issuer.key)
            .expect("leaf cert");
        (cert.der().clone(), key)
    }

    /// "usage 1 1" record: SHA-256 of the key's SubjectPublicKeyInfo.
    fn spki_sha256(usage: u8, key: &KeyPair) -> Tlsa {
        Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: Sha256::digest(key.public_key_der()).to_vec(),
        }
    }

    fn names() -> Vec<String> {
        vec!["mx.example.com".into(), "example.com".into()]
    }

    fn check(tlsa: &[Tlsa], chain: &[CertificateDer<'_>]) -> DaneResult {
        match_chain(tlsa, chain, &names(), UnixTime::now())
    }

    #[test]
    fn dane_ta_anchor_at_private_intermediate() {
        let root = ca("root", None, None, false);
        let intermediate = ca("private intermediate", Some(&root), None, false);
        let (leaf, _) = leaf(&["mx.example.com"], &intermediate, false);
        // The root is neither sent nor trusted: the intermediate is the anchor.
        let found = check(
            &[spki_sha256(2, &intermediate.key)],
            &[leaf, intermediate.der()],
        )
        .expect("DANE-TA match");
        assert_eq!((found.method, found.depth), (DaneMethod::DaneTa, 1));
        assert_eq!(found.method.as_str(), "dane-ta");
    }

    #[test]
    fn dane_ta_expired_intermediate_fails() {
        let root = ca("root", None, None, false);
        let intermediate = ca("expired intermediate", Some(&root), None, true);
        let (leaf, _) = leaf(&["mx.example.com"], &intermediate, false);
        let chain = [leaf, intermediate.der(), root.der()];
        let result = check(&[spki_sha256(2, &root.key)], &chain);
        assert!(
            matches!(result, Err(DaneError::ChainInvalid(ref why)) if why.contains("Expired")),
            "{result:?}"
        );
        // Anchoring at the expired intermediate itself fails too.
        let result = check(&[spki_sha256(2, &intermediate.key)], &chain);
        assert!(
            matches!(result, Err(DaneError::ChainInvalid(_))),
            "{result:?}"
        );
    }

    #[test]
    fn dane_ta_expired_leaf_fails() {
        let root = ca("root", None, None, false);
        let (leaf, _) = leaf(&["mx.example.com"], &root, true);
        let result = check(&[spki_sha256(2, &root.key)], &[leaf, root.der()]);
        assert!(
            matches!(result, Err(DaneError::ChainInvalid(_))),
            "{result:?}"
        );
    }

    #[test]
    fn dane_ta_path_length_violated_below_anchor_fails() {
        let root = ca("root", None, None, false);
        let limited = ca("limited", Some(&root), Some(0), false);
        let sub = ca("sub", Some(&limited), None, false);
        let (leaf, _) = leaf(&["mx.example.com"], &sub, false);
        let chain = [leaf, sub.der(), limited.der(), root.der()];
        let result = check(&[spki_sha256(2, &root.key)], &chain);
        assert!(
            matches!(result, Err(DaneError::ChainInvalid(_))),
            "{result:?}"
        );
    }

    #[test]
    fn dane_ta_anchor_own_path_length_is_enforced() {
        let root = ca("root", None, None, false);
        let anchor = ca("anchor", Some(&root), Some(0), false);
        let sub = ca("sub", Some(&anchor), None, false);
        let (leaf_cert, _) = leaf(&["mx.example.com"], &sub, false);
        let chain = [leaf_cert, sub.der(), anchor.der()];
        // Full-certificate record: the anchor's pathLenConstraint 0 forbids `sub`.
        let by_cert = Tlsa {
            usage: 2,
            selector: 0,
            matching: 1,
            data: Sha256::digest(anchor.der()).to_vec(),
        };
        let result = check(&[by_cert], &chain);
        assert!(
            matches!(result, Err(DaneError::ChainInvalid(ref why)) if why.contains("path length")),
            "{result:?}"
        );
        // Control: the same anchor with a leaf directly below it is fine.
        let (direct_leaf, _) = leaf(&["mx.example.com"], &anchor, false);
        let ok = check(&[spki_sha256(2, &anchor.key)], &[direct_leaf, anchor.der()]);
        assert_eq!(ok.map(|m| m.depth), Ok(1));
    }

    #[test]
    fn dane_ta_name_must_be_tlsa_base_or_next_hop() {
        let root = ca("root", None, None, false);
        let record = [spki_sha256(2, &root.key)];

        let (other, _) = leaf(&["mail.attacker.example"], &root, false);
        assert_eq!(
            check(&record, &[other, root.der()]),
            Err(DaneError::NameMismatch)
        );

        let (base, _) = leaf(&["mx.example.com"], &root, false);
        assert!(check(&record, &[base, root.der()]).is_ok());

        let (next_hop, _) = leaf(&["example.com"], &root, false);
        assert!(check(&record, &[next_hop, root.der()]).is_ok());
    }

    #[test]
    fn dane_ee_ignores_name_and_expiry() {
        let root = ca("root", None, None, false);
        let (leaf_cert, leaf_key) = leaf(&["unrelated.invalid"], &root, true);
        let found = check(&[spki_sha256(3, &leaf_key)], &[leaf_cert]).expect("DANE-EE match");
        assert_eq!((found.method, found.depth), (DaneMethod::DaneEe, 0));
        assert_eq!(found.method.as_str(), "dane-ee");
    }

    #[test]
    fn dane_ee_mismatch_fails() {
        let root = ca("root", None, None, false);
        let (leaf_cert, _) = leaf(&["mx.example.com"], &root, false);
        let other = KeyPair::generate().expect("key");
        assert_eq!(
            check(&[spki_sha256(3, &other)], &[leaf_cert, root.der()]),
            Err(DaneError::NoMatch)
        );
    }

    #[test]
    fn dane_ta_never_matches_the_leaf() {
        let root = ca("root", None, None, false);
        let (leaf_cert, leaf_key) = leaf(&["mx.example.com"], &root, false);
        assert_eq!(
            check(&[spki_sha256(2, &leaf_key)], &[leaf_cert, root.der()]),
            Err(DaneError::NoMatch)
        );
    }

    #[test]
    fn matched_record_index_points_at_the_usable_record() {
        let root = ca("root", None, None, false);
        let (leaf_cert, leaf_key) = leaf(&["mx.example.com"], &root, false);
        let pkix_ee = spki_sha256(1, &leaf_key);
        let records = [pkix_ee, spki_sha256(3, &leaf_key)];
        assert_eq!(check(&records, &[leaf_cert]).map(|m| m.record_index), Ok(1));
    }

    #[test]
    fn only_unusable_records() {
        let root = ca("root", None, None, false);
        let (leaf_cert, leaf_key) = leaf(&["mx.example.com"], &root, false);
        let records = vec![spki_sha256(0, &root.key), spki_sha256(1, &leaf_key)];
        assert_eq!(
            check(&records, &[leaf_cert]),
            Err(DaneError::NoUsableRecords)
        );
        assert!(matches!(
            DaneVerifier::new(records, names()),
            Err(DaneError::NoUsableRecords)
        ));
    }

    #[test]
    fn usability_rules() {
        let record = |usage, selector, matching, len| Tlsa {
            usage,
            selector,
            matching,
            data: vec![0; len],
        };
        assert!(record(3, 1, 1, 32).is_usable());
        assert!(record(2, 0, 2, 64).is_usable());
        assert!(record(2, 1, 0, 91).is_usable());
        assert!(!record(3, 1, 1, 31).is_usable());
        assert!(!record(3, 2, 1, 32).is_usable());
        assert!(!record(3, 1, 3, 32).is_usable());
        assert!(!record(3, 1, 0, 0).is_usable());
        assert!(!record(4, 1, 1, 32).is_usable());
    }

    #[tokio::test]
    async fn verifier_handshake_records_dane_ee() {
        let root = ca("root", None, None, false);
        let (leaf_cert, leaf_key) = leaf(&["mx.example.com"], &root, false);
        let verifier =
            Arc::new(DaneVerifier::new(vec![spki_sha256(3, &leaf_key)], names()).expect("usable"));
        let server = server_config(vec![leaf_cert], &leaf_key);
        assert_eq!(
            handshake(server, verifier.clone(), "mx.example.com").await,
            Ok(())
        );
        let found = verifier.matched().expect("recorded match");
        assert_eq!((found.method, found.depth), (DaneMethod::DaneEe, 0));
    }

    #[tokio::test]
    async fn verifier_handshake_dane_ta_chain() {
        let root = ca("root", None, None, false);
        let intermediate = ca("intermediate", Some(&root), None, false);
        let (leaf_cert, leaf_key) = leaf(&["mx.example.com"], &intermediate, false);
        let verifier =
            Arc::new(DaneVerifier::new(vec![spki_sha256(2, &root.key)], names()).expect("usable"));
        let server = server_config(vec![leaf_cert, intermediate.der(), root.der()], &leaf_key);
        assert_eq!(
            handshake(server, verifier.clone(), "mx.example.com").await,
            Ok(())
        );
        let found = verifier.matched().expect("recorded match");
        assert_eq!((found.method, found.depth), (DaneMethod::DaneTa, 2));
    }

    #[tokio::test]
    async fn verifier_handshake_mismatch_fails() {
        let root = ca("root", None, None, false);
        let (leaf_cert, leaf_key) = leaf(&["mx.example.com"], &root, false);
        let other = KeyPair::generate().expect("key");
        let verifier =
            Arc::new(DaneVerifier::new(vec![spki_sha256(3, &other)], names()).expect("usable"));
        let server = server_config(vec![leaf_cert], &leaf_key);
        let result = handshake(server, verifier.clone(), "mx.example.com").await;
        let err = result.expect_err("mismatch must fail");
        assert!(err.contains("NoMatch"), "unexpected error: {err}");
        assert_eq!(verifier.matched(), None);
    }
}
