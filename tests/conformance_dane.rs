//! Runs the 31 TLSA vectors in tests/data/conformance/dane/tlsa-vectors.json (OpenSSL's
//! danetest chain) against `tls::dane::match_chain`.
//!
//! Reference names are `example.com`, the base domain OpenSSL's harness uses. `unusable`
//! vectors must yield `NoUsableRecords` (RFC 7672 §2.2: still mandatory TLS, but no DANE
//! authentication), `no-match` any other error, `match` the expected method and depth.

use std::path::PathBuf;

use phigate::tls::dane::{match_chain, DaneError, DaneMethod, Tlsa};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::Value;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance/dane")
}

fn load_cert(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(data_dir().join(format!("{name}.pem"))).expect("PEM cert")
}

fn tlsa_of(v: &Value) -> Tlsa {
    let field = |i: usize| u8::try_from(v[i].as_u64().expect("number")).expect("u8");
    Tlsa {
        usage: field(0),
        selector: field(1),
        matching: field(2),
        data: hex::decode(v[3].as_str().expect("hex")).expect("hex decodes"),
    }
}

#[test]
fn pem_copies_match_vector_file() {
    let text = std::fs::read_to_string(data_dir().join("tlsa-vectors.json")).expect("vectors");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    for (name, pem) in v["certificates_pem"].as_object().expect("certs") {
        let from_json =
            CertificateDer::from_pem_slice(pem.as_str().expect("pem").as_bytes()).expect("PEM");
        assert_eq!(from_json, load_cert(name), "{name}");
    }
}

#[test]
fn tlsa_vectors() {
    let text = std::fs::read_to_string(data_dir().join("tlsa-vectors.json")).expect("vectors");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let cases = v["vectors"].as_array().expect("vectors");
    let names = vec!["example.com".to_string()];
    let mut failures = Vec::new();

    for case in cases {
        let id = case["id"].as_str().expect("id");
        let chain: Vec<CertificateDer<'static>> = case["presented_chain"]
            .as_array()
            .expect("chain")
            .iter()
            .map(|n| load_cert(n.as_str().expect("name")))
            .collect();
        let record = tlsa_of(&case["tlsa"]);
        let result = match_chain(
            std::slice::from_ref(&record),
            &chain,
            &names,
            UnixTime::now(),
        );
        let ok = match case["expect"].as_str().expect("expect") {
            "match" => {
                let depth = case["match_depth"].as_u64().expect("depth") as usize;
                let method = if record.usage == 3 {
                    DaneMethod::DaneEe
                } else {
                    DaneMethod::DaneTa
                };
                result
                    .as_ref()
                    .is_ok_and(|m| m.depth == depth && m.method == method && m.record_index == 0)
            }
            "no-match" => matches!(result, Err(ref e) if *e != DaneError::NoUsableRecords),
            "unusable" => result == Err(DaneError::NoUsableRecords),
            other => panic!("unknown expectation {other}"),
        };
        if !ok {
            failures.push(format!("{id}: got {result:?}, expected {}", case["expect"]));
        }
    }
    assert_eq!(cases.len(), 31);
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn dane_ta_on_danetest_chain_checks_the_name() {
    // 2 1 1 on the issuer matches, but only for the leaf's own name.
    let record = Tlsa {
        usage: 2,
        selector: 1,
        matching: 1,
        data: hex::decode("65A457617072DA3E7F1152471EB3D406526530097D0A9AA34EB47C990A1FCDA3")
            .expect("hex"),
    };
    let chain = [load_cert("leaf"), load_cert("issuer")];
    let wrong = vec!["mx.example.net".to_string()];
    assert_eq!(
        match_chain(
            std::slice::from_ref(&record),
            &chain,
            &wrong,
            UnixTime::now()
        ),
        Err(DaneError::NameMismatch)
    );
    // DANE-EE ignores names entirely.
    let ee = Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: hex::decode("3111668338043DE264D0256A702248696C9484B6221A42740F920187B4C61838")
            .expect("hex"),
    };
    assert!(match_chain(&[ee], &chain, &wrong, UnixTime::now()).is_ok());
}

#[test]
fn dane_ta_full_key_in_record_without_presented_anchor() {
    // "2 1 0" with the root's full SPKI: the server sends only leaf + issuer.
    let root_spki = "3059301306072A8648CE3D020106082A8648CE3D03010703420004D1DA578FD18FB86456B0D91B5656BDD68D4DDBD250E337571127C75E0560F41D0AF91BFAF8805F80C28C026A14D4FE8C30A9673B9EC0C05A84AA810D1341B76C";
    let record = Tlsa {
        usage: 2,
        selector: 1,
        matching: 0,
        data: hex::decode(root_spki).expect("hex"),
    };
    let chain = [load_cert("leaf"), load_cert("issuer")];
    let names = vec!["example.com".to_string()];
    let found = match_chain(
        std::slice::from_ref(&record),
        &chain,
        &names,
        UnixTime::now(),
    )
    .expect("anchored by the record's key");
    assert_eq!((found.method, found.depth), (DaneMethod::DaneTa, 2));

    // "2 0 0" with the full root certificate works the same way.
    let cert_record = Tlsa {
        usage: 2,
        selector: 0,
        matching: 0,
        data: load_cert("root").to_vec(),
    };
    let found = match_chain(&[cert_record], &chain, &names, UnixTime::now())
        .expect("anchored by the record's certificate");
    assert_eq!(found.depth, 2);

    // The issuer's key anchors a chain of just the leaf, at depth 1.
    let mut issuer_key = record.clone();
    issuer_key.data = hex::decode(
        "3059301306072A8648CE3D020106082A8648CE3D030107034200047D4BAE18B49F5DC69D0A3C85C66A3E2119DE92CFAD081FAD55C12D510EC97B6C00E13695A8D9713548FE60DF15573390433E2A1BD92DB4B7AA016EC6185DC5AF",
    )
    .expect("hex");
    let found = match_chain(
        std::slice::from_ref(&issuer_key),
        &[load_cert("leaf")],
        &names,
        UnixTime::now(),
    )
    .expect("issuer key anchors the leaf");
    assert_eq!(found.depth, 1);
    // A certificate that signed nothing in the chain does not match.
    let unrelated = Tlsa {
        data: load_cert("anon-neverValid").to_vec(),
        selector: 0,
        ..record
    };
    assert_eq!(
        match_chain(&[unrelated], &chain, &names, UnixTime::now()),
        Err(DaneError::NoMatch)
    );
}
