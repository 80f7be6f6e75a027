//! The DLP scanner (built-in detectors, default config) and the shipped policy's
//! evaluate path over arbitrary UTF-8: never panics, every finding points inside the
//! normalised text on a char boundary, and the per-recipient decision covers every recipient.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::dlp::normalize::normalize;
use phigate::dlp::{DlpConfig, Scanner};
use phigate::message::TextView;
use phigate::policy::{MessageContext, Policy};
use std::sync::OnceLock;

fn scanner() -> &'static Scanner {
    static S: OnceLock<Scanner> = OnceLock::new();
    S.get_or_init(|| Scanner::new(&DlpConfig::default()).expect("default DLP config builds"))
}

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        Policy::from_toml_str(include_str!("../../conf/policy.toml"), "conf/policy.toml")
            .expect("shipped policy loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let view = TextView::from_text(text);
    let scan = scanner().scan(&view);
    // Offsets are into the normalised text of the (only) part.
    let normal = normalize(text);
    for f in &scan.findings {
        let at = f.location.offset;
        assert!(at <= normal.len() && normal.is_char_boundary(at));
    }
    let recipients = vec![
        "billing@partner.example".to_string(),
        "someone@external.example".to_string(),
    ];
    let ctx = MessageContext {
        sender: "ehr@clinic.example",
        recipients: &recipients,
        auth_identity: Some("ehr"),
        listener: "submission",
        size: text.len() as u64,
        requiretls: false,
    };
    let scan = policy().scanner().scan(&view);
    let decision = policy().evaluate(&ctx, &scan, &view);
    assert_eq!(decision.recipients.len(), recipients.len());
});
