//! Checksum and structure validators. Each takes the candidate with separators
//! already removed (ASCII digits / uppercase letters) and says whether it could be real.

/// Luhn (mod 10) over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0, |acc, c| acc * 10 + u32::from(c - b'0'))
}

fn all_digits(d: &[u8], len: usize) -> bool {
    d.len() == len && d.iter().all(u8::is_ascii_digit)
}

/// Numbers the SSA or others have published (wallet cards, ads, examples): never real.
const ADVERTISED_SSNS: [&[u8]; 4] = [b"078051120", b"219099999", b"457555462", b"123456789"];

/// US Social Security Number: no 000/666/9xx area, no 00 group, no 0000 serial.
pub fn ssn(d: &[u8]) -> bool {
    if !all_digits(d, 9) || ADVERTISED_SSNS.contains(&d) {
        return false;
    }
    let (area, group, serial) = (num(&d[..3]), num(&d[3..5]), num(&d[5..]));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// IRS Individual Taxpayer Identification Number: 9xx-[50-65|70-88|90-92|94-99]-xxxx.
pub fn itin(d: &[u8]) -> bool {
    if !all_digits(d, 9) || d[0] != b'9' {
        return false;
    }
    let group = num(&d[3..5]);
    matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
}

/// National Provider Identifier: 10 digits starting 1 or 2, Luhn over "80840" + number.
pub fn npi(d: &[u8]) -> bool {
    if !all_digits(d, 10) || !(d[0] == b'1' || d[0] == b'2') {
        return false;
    }
    let mut full = b"80840".to_vec();
    full.extend_from_slice(d);
    luhn(&full)
}

/// DEA registration number: 2 letters + 7 digits;
/// (d1 + d3 + d5) + 2 * (d2 + d4 + d6) ends in d7.
pub fn dea(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    // Registrant type letters in use (A-M, P-U, X; G for military).
    let first_ok = matches!(d[0], b'A'..=b'M' | b'P'..=b'U' | b'X');
    let second_ok = d[1].is_ascii_uppercase() || d[1] == b'9';
    let digits = &d[2..];
    if !first_ok || !second_ok || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let v: Vec<u32> = digits.iter().map(|c| u32::from(c - b'0')).collect();
    let sum = v[0] + v[2] + v[4] + 2 * (v[1] + v[3] + v[5]);
    sum % 10 == v[6]
}

/// Letters used in MBIs: A-Z without S, L, O, I, B, Z.
fn mbi_alpha(c: u8) -> bool {
    c.is_ascii_uppercase() && !b"SLOIBZ".contains(&c)
}

/// Medicare Beneficiary Identifier (CMS format): C A AN N A AN N A A N N,
/// first character 1-9, letters exclude S L O I B Z.
pub fn mbi(d: &[u8]) -> bool {
    if d.len() != 11 {
        return false;
    }
    let digit = |c: u8| c.is_ascii_digit();
    let alnum = |c: u8| digit(c) || mbi_alpha(c);
    (b'1'..=b'9').contains(&d[0])
        && mbi_alpha(d[1])
        && alnum(d[2])
        && digit(d[3])
        && mbi_alpha(d[4])
        && alnum(d[5])
        && digit(d[6])
        && mbi_alpha(d[7])
        && mbi_alpha(d[8])
        && digit(d[9])
        && digit(d[10])
}

/// Legacy Medicare Health Insurance Claim Number: a 9-digit SSN-shaped number
/// followed by a beneficiary identification code (a letter, optionally a digit or letter).
pub fn hicn(d: &[u8]) -> bool {
    if !(10..=11).contains(&d.len()) || !d[..9].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let bic = &d[9..];
    let valid_letter = matches!(bic[0], b'A'..=b'H' | b'J'..=b'K' | b'M' | b'T' | b'W');
    let tail_ok = bic.get(1).is_none_or(|c| c.is_ascii_alphanumeric());
    // The leading nine digits follow SSN structure rules.
    let area = num(&d[..3]);
    valid_letter && tail_ok && area != 0 && area != 666 && num(&d[3..5]) != 0 && num(&d[5..9]) != 0
}

/// Payment card: 13-19 digits, a known issuer prefix and a valid Luhn digit.
pub fn card(d: &[u8]) -> bool {
    if !(13..=19).contains(&d.len()) || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    card_brand(d).is_some() && luhn(d)
}

/// Issuer by IIN prefix and length (Visa, Mastercard incl. 2221-2720, Amex, Discover,
/// Diners, JCB, UnionPay).
pub fn card_brand(d: &[u8]) -> Option<&'static str> {
    let len = d.len();
    let p = |n: usize| if len >= n { num(&d[..n]) } else { 0 };
    if d[0] == b'4' && matches!(len, 13 | 16 | 19) {
        Some("visa")
    } else if matches!(
        p(4),
        5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763
    ) {
        // Maestro: 12-19 digits (13-19 reach here).
        Some("maestro")
    } else if len == 16 && ((51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4))) {
        Some("mastercard")
    } else if len == 15 && matches!(p(2), 34 | 37) {
        Some("amex")
    } else if (16..=19).contains(&len)
        && (p(4) == 6011 || p(2) == 65 || (644..=649).contains(&p(3)))
    {
        Some("discover")
    } else if (14..=19).contains(&len) && ((300..=305).contains(&p(3)) || matches!(p(2), 36 | 38)) {
        Some("diners")
    } else if (16..=19).contains(&len) && (3528..=3589).contains(&p(4)) {
        Some("jcb")
    } else if (16..=19).contains(&len) && p(2) == 62 {
        Some("unionpay")
    } else {
        None
    }
}

/// ABA routing transit number: prefix 00-12, 21-32, 61-72 or 80, and
/// 3*(d1+d4+d7) + 7*(d2+d5+d8) + (d3+d6+d9) divisible by 10.
pub fn aba(d: &[u8]) -> bool {
    if !all_digits(d, 9) {
        return false;
    }
    let prefix = num(&d[..2]);
    if !matches!(prefix, 0..=12 | 21..=32 | 61..=72 | 80) {
        return false;
    }
    let v: Vec<u32> = d.iter().map(|c| u32::from(c - b'0')).collect();
    let sum = 3 * (v[0] + v[3] + v[6]) + 7 * (v[1] + v[4] + v[7]) + (v[2] + v[5] + v[8]);
    sum % 10 == 0
}

/// ICD-10-CM code shape: letter (not U), digit, digit or A/B, optional dot + 1-4 chars.
pub fn icd10(code: &[u8]) -> bool {
    let base: Vec<u8> = code.iter().copied().filter(|c| *c != b'.').collect();
    (3..=7).contains(&base.len())
        && base[0].is_ascii_uppercase()
        && base[0] != b'U'
        && base[1].is_ascii_digit()
        && (base[2].is_ascii_digit() || base[2] == b'A' || base[2] == b'B')
        && base[3..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

/// A calendar date plausible as a date of birth: month 1-12, day valid for the
/// month, year 1900-2099 (two-digit years accepted).
pub fn birth_date(year: u32, month: u32, day: u32) -> bool {
    let year = match year {
        0..=99 => 1900 + year,
        y => y,
    };
    if !(1900..=2099).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let max = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_cases() {
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"79927398710"));
        assert!(!luhn(b""));
        assert!(!luhn(b"12a4"));
        assert!(luhn(b"0"));
    }

    #[test]
    fn ssn_cases() {
        assert!(ssn(b"536228901"));
        assert!(ssn(b"001010001"));
        assert!(ssn(b"899991234"));
        for bad in [
            &b"000123456"[..],
            b"666123456",
            b"900123456",
            b"999999999",
            b"123001234",
            b"123450000",
            b"078051120",
            b"219099999",
            b"12345678",
            b"1234567890",
            b"12345678a",
        ] {
            assert!(!ssn(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn itin_cases() {
        assert!(itin(b"912701234"));
        assert!(itin(b"900501234"));
        assert!(itin(b"999991234"));
        assert!(!itin(b"912931234"), "93 is not an ITIN group");
        assert!(!itin(b"912491234"));
        assert!(!itin(b"812701234"));
    }

    #[test]
    fn npi_cases() {
        // CMS's published example NPI.
        assert!(npi(b"1234567893"));
        assert!(!npi(b"1234567890"));
        assert!(!npi(b"3234567893"), "must start with 1 or 2");
        assert!(!npi(b"123456789"));
        assert!(!npi(b"12345678931"));
    }

    #[test]
    fn dea_cases() {
        // (1+3+1) + 2*(2+4+4) = 25 -> check digit 5.
        assert!(dea(b"AB1234145"));
        assert!(dea(b"F91234145"), "9 as second char is allowed");
        assert!(!dea(b"AB1234144"));
        assert!(!dea(b"NB1234145"), "N is not a registrant type");
        assert!(!dea(b"A11234145"));
        assert!(!dea(b"AB123414"));
    }

    #[test]
    fn mbi_cases() {
        // CMS's published example MBI.
        assert!(mbi(b"1EG4TE5MK73"));
        assert!(!mbi(b"0EG4TE5MK73"), "first char 1-9");
        assert!(!mbi(b"1SG4TE5MK73"), "S excluded");
        assert!(!mbi(b"1EG4TE5MK7"));
        assert!(!mbi(b"1EG4TE5MKZ3"));
        assert!(!mbi(b"1EGATE5MK73"), "position 4 must be a digit");
    }

    #[test]
    fn hicn_cases() {
        assert!(hicn(b"536228901A"));
        assert!(hicn(b"536228901C1"));
        assert!(!hicn(b"536228901Z"));
        assert!(!hicn(b"000228901A"));
        assert!(!hicn(b"536228901"));
    }

    #[test]
    fn card_cases() {
        assert!(card(b"4111111111111111"));
        assert!(card(b"5555555555554444"));
        assert!(card(b"2223003122003222"), "Mastercard 2-series");
        assert!(card(b"378282246310005"));
        assert!(card(b"6011111111111117"));
        assert!(card(b"3530111333300000"));
        assert!(!card(b"4111111111111112"), "Luhn fails");
        assert_eq!(card_brand(b"2720990000000000"), Some("mastercard"));
        assert_eq!(card_brand(b"2721000000000000"), None);
        assert_eq!(card_brand(b"2220990000000000"), None);
        assert!(!card(b"1234567812345670"), "no issuer");
        assert!(!card(b"411111111111"), "too short");
        assert_eq!(card_brand(b"6759649826438453"), Some("maestro"));
        assert!(card(b"6759649826438453"));
        assert!(!card(b"6759649826438454"), "Maestro with a bad Luhn digit");
    }

    #[test]
    fn aba_cases() {
        assert!(aba(b"011000015"));
        assert!(aba(b"021000021"));
        assert!(aba(b"322271627"));
        assert!(!aba(b"021000022"));
        assert!(!aba(b"131000026"), "prefix 13 unused");
        assert!(!aba(b"02100002"));
    }

    #[test]
    fn icd10_cases() {
        assert!(icd10(b"E11.9"));
        assert!(icd10(b"S72.001A"));
        assert!(icd10(b"J45"));
        assert!(!icd10(b"U07.1"));
        assert!(!icd10(b"EE1.9"));
        assert!(!icd10(b"E1"));
    }

    #[test]
    fn birth_date_cases() {
        assert!(birth_date(1970, 2, 28));
        assert!(birth_date(2000, 2, 29));
        assert!(!birth_date(1900, 2, 29));
        assert!(!birth_date(1970, 13, 1));
        assert!(!birth_date(1970, 4, 31));
        assert!(!birth_date(1800, 1, 1));
        assert!(birth_date(85, 1, 1));
    }
}
