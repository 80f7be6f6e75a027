//! New signing keys for `phigate dkim generate` and `rotate`: the PEM to write and the
//! DNS TXT record to publish.

use super::DkimError;

/// Key algorithms `phigate dkim generate` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    Rsa2048,
}

/// A new key: its PEM and the `p=`/`k=` of its DNS record.
pub struct Generated {
    pub pem: String,
    pub record: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![n as u8],
        128..=255 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// SubjectPublicKeyInfo around a PKCS#1 RSAPublicKey: the form `p=` is read as by
/// every verifier (RFC 6376 §3.6.1 via `openssl rsa -pubout`).
pub(super) fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    let alg: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    bits.extend(der_len(pkcs1.len() + 1));
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(der_len(alg.len() + bits.len()));
    out.extend_from_slice(alg);
    out.extend(bits);
    out
}

pub fn generate(alg: Algorithm) -> Result<Generated, DkimError> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let gen_err = |e: mail_auth::Error| DkimError::Generate(e.to_string());
    match alg {
        Algorithm::Ed25519 => {
            let pair =
                mail_auth::dkim::generate::DkimKeyPair::generate_ed25519().map_err(gen_err)?;
            Ok(Generated {
                pem: pem("PRIVATE KEY", pair.private_key()),
                record: format!("v=DKIM1; k=ed25519; p={}", b64(pair.public_key())),
            })
        }
        Algorithm::Rsa2048 => {
            let pair =
                mail_auth::dkim::generate::DkimKeyPair::generate_rsa(2048).map_err(gen_err)?;
            Ok(Generated {
                pem: pem("RSA PRIVATE KEY", pair.private_key()),
                record: format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(pair.public_key()))),
            })
        }
    }
}

/// A TXT record value as zone-file strings of at most 255 octets each.
pub fn txt_strings(record: &str) -> String {
    record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}
