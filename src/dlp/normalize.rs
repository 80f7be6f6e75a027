//! Text normalisation before detection, so look-alike characters cannot hide a number:
//! Unicode decimal digits and dashes become ASCII, zero-width characters disappear,
//! odd spaces become a plain space, and HTML character references are decoded.

use std::borrow::Cow;

/// Normalise `text`. Plain ASCII without `&` (the common case) is returned borrowed.
pub fn normalize(text: &str) -> Cow<'_, str> {
    if text.is_ascii() && !text.as_bytes().contains(&b'&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '&' {
            if let Some((decoded, used)) = decode_entity(rest) {
                push_mapped(&mut out, decoded);
                rest = &rest[used..];
                continue;
            }
        }
        push_mapped(&mut out, c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

fn push_mapped(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c);
        return;
    }
    match map_char(c) {
        Mapped::Keep => out.push(c),
        Mapped::Drop => {}
        Mapped::To(a) => out.push(a),
    }
}

enum Mapped {
    Keep,
    Drop,
    To(char),
}

/// First code points of Unicode decimal digit blocks commonly used to disguise numbers.
const DIGIT_ZEROS: [u32; 12] = [
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0BE6, 0x0E50, 0xFF10, 0x1D7CE,
    0x1D7D8,
];

fn map_char(c: char) -> Mapped {
    let cp = c as u32;
    match cp {
        // Zero-width space/joiners, word joiner, BOM, soft hyphen.
        0x200B..=0x200D | 0x2060 | 0xFEFF | 0x00AD => return Mapped::Drop,
        // Hyphen, non-breaking hyphen, figure dash, en/em dash, minus, small/fullwidth hyphen-minus.
        0x2010..=0x2015 | 0x2212 | 0xFE58 | 0xFE63 | 0xFF0D => return Mapped::To('-'),
        // No-break and typographic spaces.
        0x00A0 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000 => return Mapped::To(' '),
        // Fullwidth Latin capitals and small letters.
        0xFF21..=0xFF3A => {
            return char::from_u32(cp - 0xFF21 + 'A' as u32).map_or(Mapped::Keep, Mapped::To)
        }
        0xFF41..=0xFF5A => {
            return char::from_u32(cp - 0xFF41 + 'a' as u32).map_or(Mapped::Keep, Mapped::To)
        }
        // Mathematical digits run in five consecutive blocks of ten.
        0x1D7CE..=0x1D7FF => {
            return char::from_digit((cp - 0x1D7CE) % 10, 10).map_or(Mapped::Keep, Mapped::To)
        }
        _ => {}
    }
    for zero in DIGIT_ZEROS {
        if (zero..zero + 10).contains(&cp) {
            return char::from_digit(cp - zero, 10).map_or(Mapped::Keep, Mapped::To);
        }
    }
    Mapped::Keep
}

/// Decode an HTML character reference at the start of `s` (which begins with `&`).
/// Returns the character and the number of bytes consumed.
fn decode_entity(s: &str) -> Option<(char, usize)> {
    let end = s.as_bytes().iter().take(12).position(|b| *b == b';')?;
    let body = &s[1..end];
    let c = if let Some(num) = body.strip_prefix('#') {
        let cp = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        char::from_u32(cp)?
    } else {
        match body {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "nbsp" => ' ',
            "ndash" => '-',
            "mdash" => '-',
            "hyphen" | "dash" | "minus" => '-',
            "shy" | "zwj" | "zwnj" => '\u{200B}',
            "period" => '.',
            "sol" => '/',
            "lpar" => '(',
            "rpar" => ')',
            _ => return None,
        }
    };
    Some((c, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_borrowed() {
        assert!(matches!(normalize("SSN 123-45-6789"), Cow::Borrowed(_)));
    }

    #[test]
    fn unicode_digits_dashes_and_zero_width() {
        assert_eq!(
            normalize("\u{FF11}\u{FF12}\u{FF13}\u{2013}45\u{2014}67\u{200B}89"),
            "123-45-6789"
        );
        assert_eq!(normalize("\u{0661}\u{0662}\u{0663}"), "123");
        assert_eq!(normalize("\u{1D7CF}\u{1D7D0}"), "12");
        assert_eq!(normalize("a\u{00A0}b"), "a b");
    }

    #[test]
    fn html_entities() {
        assert_eq!(
            normalize("123&#45;45&#x2D;6789 &amp; &lt;x&gt;"),
            "123-45-6789 & <x>"
        );
        assert_eq!(normalize("1&ndash;2&nbsp;3"), "1-2 3");
        // Unknown or unterminated references stay as they are.
        assert_eq!(normalize("AT&T &bogus; &"), "AT&T &bogus; &");
        assert_eq!(normalize("12&shy;34"), "1234");
    }
}
