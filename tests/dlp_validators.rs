//! Property tests: generated valid identifiers are found by the scanner (with their
//! usual label), and checksum-breaking mutations are neither validated nor reported.

use phigate::dlp::validators as v;
use phigate::dlp::{Confidence, DlpConfig, Scanner};
use proptest::prelude::*;
use std::sync::OnceLock;

fn scanner() -> &'static Scanner {
    static S: OnceLock<Scanner> = OnceLock::new();
    S.get_or_init(|| Scanner::new(&DlpConfig::default()).expect("default config"))
}

fn found(text: &str, detector: &str) -> usize {
    scanner()
        .scan_text(text)
        .count_at_least(detector, Confidence::Medium)
}

fn luhn_digit(payload: &str) -> char {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// Change the digit at `pos` to a different digit (`delta` in 1..=9).
fn bump(s: &str, pos: usize, delta: u8) -> String {
    let mut b = s.as_bytes().to_vec();
    b[pos] = b'0' + (b[pos] - b'0' + delta) % 10;
    String::from_utf8(b).unwrap_or_default()
}

fn npi_strategy() -> impl Strategy<Value = String> {
    (prop::sample::select(vec!['1', '2']), "[0-9]{8}").prop_map(|(f, rest)| {
        let base = format!("{f}{rest}");
        let check = luhn_digit(&format!("80840{base}"));
        format!("{base}{check}")
    })
}

fn card_strategy() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["4", "51", "55", "2221", "2720", "6011", "34", "37"]),
        "[0-9]{16}",
    )
        .prop_map(|(prefix, fill)| {
            let len = if prefix.starts_with('3') { 15 } else { 16 };
            let payload = format!("{prefix}{}", &fill[..len - 1 - prefix.len()]);
            let check = luhn_digit(&payload);
            format!("{payload}{check}")
        })
}

fn aba_strategy() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![0u32, 5, 12, 21, 32, 61, 72, 80]),
        "[0-9]{6}",
    )
        .prop_map(|(p, rest)| {
            let s = format!("{p:02}{rest}");
            let d: Vec<u32> = s.bytes().map(|b| u32::from(b - b'0')).collect();
            let partial = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5];
            format!("{s}{}", (10 - partial % 10) % 10)
        })
}

fn dea_strategy() -> impl Strategy<Value = String> {
    ("[ABCDFGMPRX]", "[A-Z9]", "[0-9]{6}").prop_map(|(a, b, six)| {
        let d: Vec<u32> = six.bytes().map(|c| u32::from(c - b'0')).collect();
        let check = (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10;
        format!("{a}{b}{six}{check}")
    })
}

fn ssn_strategy() -> impl Strategy<Value = String> {
    (1u32..900, 1u32..100, 1u32..10000)
        .prop_filter("not 666", |(a, _, _)| *a != 666)
        .prop_map(|(a, g, s)| format!("{a:03}-{g:02}-{s:04}"))
        .prop_filter("not an advertised fake", |s| {
            !["078-05-1120", "219-09-9999", "457-55-5462", "123-45-6789"].contains(&s.as_str())
        })
}

fn mbi_strategy() -> impl Strategy<Value = String> {
    let a = "[AC-HJKMNP-RT-Y]";
    let an = "[AC-HJKMNP-RT-Y0-9]";
    ("[1-9]", a, an, "[0-9]", a, an, "[0-9]", a, a, "[0-9]{2}").prop_map(
        |(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)| {
            format!("{c1}{c2}{c3}{c4}{c5}{c6}{c7}{c8}{c9}{c10}")
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn npi_found_and_mutations_rejected(npi in npi_strategy(), pos in 1usize..10, delta in 1u8..10) {
        prop_assert!(v::npi(npi.as_bytes()));
        prop_assert_eq!(found(&format!("Referring provider NPI {npi} signed."), "npi"), 1);
        let bad = bump(&npi, pos, delta);
        prop_assert!(!v::npi(bad.as_bytes()));
        prop_assert_eq!(found(&format!("Referring provider NPI {bad} signed."), "npi"), 0);
    }

    #[test]
    fn card_found_and_mutations_rejected(card in card_strategy(), pos in 4usize..15, delta in 1u8..10) {
        prop_assert!(v::card(card.as_bytes()));
        prop_assert_eq!(found(&format!("card {card} exp 01/29"), "card"), 1);
        let bad = bump(&card, pos, delta);
        prop_assert!(!v::card(bad.as_bytes()));
        prop_assert_eq!(found(&format!("card {bad} exp 01/29"), "card"), 0);
    }

    #[test]
    fn aba_found_and_mutations_rejected(aba in aba_strategy(), pos in 2usize..9, delta in 1u8..10) {
        prop_assert!(v::aba(aba.as_bytes()));
        prop_assert_eq!(found(&format!("ACH routing number {aba}"), "aba"), 1);
        let bad = bump(&aba, pos, delta);
        prop_assert!(!v::aba(bad.as_bytes()));
        prop_assert_eq!(found(&format!("ACH routing number {bad}"), "aba"), 0);
    }

    #[test]
    fn dea_found_and_mutations_rejected(dea in dea_strategy(), idx in 0usize..4, delta in 1u8..10) {
        prop_assert!(v::dea(dea.as_bytes()));
        prop_assert_eq!(found(&format!("Prescriber DEA {dea}"), "dea"), 1);
        // Weight-1 digits (positions 2, 4, 6) and the check digit: every change is caught.
        let pos = [2usize, 4, 6, 8][idx];
        let bad = bump(&dea, pos, delta);
        prop_assert!(!v::dea(bad.as_bytes()));
        prop_assert_eq!(found(&format!("Prescriber DEA {bad}"), "dea"), 0);
    }

    #[test]
    fn ssn_found_and_invalid_areas_rejected(ssn in ssn_strategy(), bad_area in prop::sample::select(vec!["000", "666", "900", "987"])) {
        prop_assert_eq!(found(&format!("SSN {ssn}"), "ssn"), 1);
        let bad = format!("{bad_area}{}", &ssn[3..]);
        prop_assert_eq!(found(&format!("SSN {bad}"), "ssn"), 0);
        let zero_serial = format!("{}0000", &ssn[..7]);
        prop_assert_eq!(found(&format!("SSN {zero_serial}"), "ssn"), 0);
    }

    #[test]
    fn mbi_found_and_excluded_letters_rejected(mbi in mbi_strategy(), bad in prop::sample::select(vec!['S', 'L', 'O', 'I', 'B', 'Z'])) {
        prop_assert!(v::mbi(mbi.as_bytes()));
        prop_assert_eq!(found(&format!("Medicare MBI {mbi}"), "mbi"), 1);
        let mut b = mbi.into_bytes();
        b[1] = bad as u8;
        let broken = String::from_utf8(b).unwrap_or_default();
        prop_assert!(!v::mbi(broken.as_bytes()));
        prop_assert_eq!(found(&format!("Medicare MBI {broken}"), "mbi"), 0);
    }

    #[test]
    fn scanning_arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = scanner().scan_text(&s);
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let view = phigate::message::TextView::from_bytes(&b);
        prop_assert_eq!(view.size, b.len());
        let _ = scanner().scan(&view);
    }
}
