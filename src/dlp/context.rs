//! Context words: whole-word, case-insensitive keyword lookup near a candidate.
//! Context is searched only inside a small window around a candidate, so the cost is
//! paid per candidate, not per byte of mail.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Context categories (bit flags).
pub const SSN: u32 = 1;
pub const NPI: u32 = 1 << 1;
pub const DEA: u32 = 1 << 2;
pub const MEDICARE: u32 = 1 << 3;
pub const CARD: u32 = 1 << 4;
pub const ABA: u32 = 1 << 5;
pub const ICD: u32 = 1 << 6;
pub const DOB: u32 = 1 << 7;
/// The NPI named explicitly (not just "provider"): required for NPIs written with
/// dashes, whose shape is shared with phone numbers.
pub const NPI_ID: u32 = 1 << 8;

const WORDS: &[(&str, u32)] = &[
    ("ssn", SSN),
    ("ssns", SSN),
    ("ss#", SSN),
    ("ssn#", SSN),
    ("social security", SSN),
    ("social security number", SSN),
    ("soc sec", SSN),
    ("social", SSN),
    ("itin", SSN),
    ("taxpayer", SSN),
    ("tin", SSN),
    ("tax id", SSN),
    ("npi", NPI | NPI_ID),
    ("npi#", NPI | NPI_ID),
    ("national provider", NPI | NPI_ID),
    ("provider", NPI),
    ("prescriber", NPI | DEA),
    ("physician", NPI),
    ("rendering", NPI),
    ("referring", NPI),
    ("billing provider", NPI),
    ("dea", DEA),
    ("dea#", DEA),
    ("registration", DEA),
    ("controlled substance", DEA),
    ("medicare", MEDICARE),
    ("mbi", MEDICARE),
    ("hicn", MEDICARE),
    ("hic", MEDICARE),
    ("beneficiary", MEDICARE),
    ("member id", MEDICARE),
    ("medicare id", MEDICARE),
    ("claim number", MEDICARE),
    ("card", CARD),
    ("credit", CARD),
    ("debit", CARD),
    ("visa", CARD),
    ("mastercard", CARD),
    ("amex", CARD),
    ("american express", CARD),
    ("discover", CARD),
    ("cc", CARD),
    ("exp", CARD),
    ("expiry", CARD),
    ("expiration", CARD),
    ("cvv", CARD),
    ("cvc", CARD),
    ("payment", CARD),
    ("pan", CARD),
    ("routing", ABA),
    ("aba", ABA),
    ("rtn", ABA),
    ("bank", ABA),
    ("transit", ABA),
    ("ach", ABA),
    ("wire", ABA),
    ("direct deposit", ABA),
    ("diagnosis", ICD),
    ("diagnoses", ICD),
    ("diagnosed", ICD),
    ("dx", ICD),
    ("icd", ICD),
    ("icd-10", ICD),
    ("icd10", ICD),
    ("icd-10-cm", ICD),
    ("condition", ICD),
    ("assessment", ICD),
    ("problem list", ICD),
    ("dob", DOB),
    ("d.o.b", DOB),
    ("d.o.b.", DOB),
    ("born", DOB),
    ("birth", DOB),
    ("birthdate", DOB),
    ("date of birth", DOB),
    ("birthday", DOB),
];

/// Built-in health vocabulary for the HIPAA co-occurrence rule.
pub const HEALTH_TERMS: &[&str] = &[
    "patient",
    "patients",
    "diagnosis",
    "diagnosed",
    "treatment",
    "prescription",
    "prescribed",
    "medication",
    "medications",
    "lab results",
    "test results",
    "blood test",
    "clinic",
    "hospital",
    "medical record",
    "medical records",
    "mrn",
    "chart",
    "health plan",
    "insurance claim",
    "therapy",
    "surgery",
    "oncology",
    "chemotherapy",
    "diabetes",
    "hypertension",
    "hiv",
    "cancer",
    "tumor",
    "depression",
    "anxiety",
    "pregnancy",
    "pregnant",
    "admitted",
    "discharge",
    "discharged",
    "symptoms",
    "biopsy",
    "allergy",
    "allergies",
    "dosage",
    "radiology",
    "pathology",
    "cardiology",
    "psychiatric",
    "mental health",
    "substance use",
    "immunization",
    "vaccination",
    "mri",
    "x-ray",
    "prognosis",
    "physician",
    "referral",
    "appointment",
    "medicaid",
    "medicare",
];

/// A whole-word keyword matcher: pattern index -> category bits.
pub struct Keywords {
    ac: AhoCorasick,
    cats: Vec<u32>,
}

impl Keywords {
    pub fn new<'a>(words: impl IntoIterator<Item = (&'a str, u32)>) -> Result<Self, String> {
        let (pats, cats): (Vec<&str>, Vec<u32>) = words.into_iter().unzip();
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(pats)
            .map_err(|e| e.to_string())?;
        Ok(Keywords { ac, cats })
    }

    pub fn builtin_context() -> Result<Self, String> {
        Self::new(WORDS.iter().copied())
    }

    pub fn health_terms() -> Result<Self, String> {
        Self::new(HEALTH_TERMS.iter().map(|w| (*w, 1)))
    }

    /// Whole-word matches in `text[from..to]`: (start, end, category/pattern data).
    pub fn find_words<'t>(
        &'t self,
        text: &'t str,
        from: usize,
        to: usize,
    ) -> impl Iterator<Item = (usize, usize, usize)> + 't {
        let bytes = text.as_bytes();
        self.ac
            .find_iter(&bytes[from..to])
            .map(move |m| (from + m.start(), from + m.end(), m.pattern().as_usize()))
            .filter(move |(s, e, _)| is_word_boundary(bytes, *s, *e))
    }

    /// Category bits of all whole words within `window` bytes around `start..end`.
    pub fn around(&self, text: &str, start: usize, end: usize, before: usize, after: usize) -> u32 {
        let from = floor_boundary(text, start.saturating_sub(before));
        let to = ceil_boundary(text, (end + after).min(text.len()));
        self.find_words(text, from, to).fold(0, |acc, (_, _, p)| {
            acc | self.cats.get(p).copied().unwrap_or(0)
        })
    }

    /// Category bits (restricted to `mask`) of the keyword nearest to `start..end`
    /// within the window; words after the candidate count double distance, since
    /// labels usually precede values, and words on another line come after every
    /// word on the value's own line (a table row or form line labels its own value).
    /// Settles numbers that fit several detectors.
    pub fn nearest(
        &self,
        text: &str,
        start: usize,
        end: usize,
        before: usize,
        after: usize,
        mask: u32,
    ) -> u32 {
        let from = floor_boundary(text, start.saturating_sub(before));
        let to = ceil_boundary(text, (end + after).min(text.len()));
        self.find_words(text, from, to)
            .filter_map(|(s, e, p)| {
                let cat = self.cats.get(p).copied().unwrap_or(0) & mask;
                let (dist, gap) = if e <= start {
                    (start - e, &text.as_bytes()[e..start])
                } else {
                    (2 * s.saturating_sub(end), &text.as_bytes()[end..s.max(end)])
                };
                let dist = if gap.contains(&b'\n') {
                    dist + 4 * (before + after)
                } else {
                    dist
                };
                (cat != 0).then_some((dist, cat))
            })
            .min_by_key(|(d, _)| *d)
            .map_or(0, |(_, c)| c)
    }

    /// True if any whole word occurs anywhere in `text`.
    pub fn any(&self, text: &str) -> bool {
        self.find_words(text, 0, text.len()).next().is_some()
    }
}

/// A keyword counts only as a whole word: `lic` must not match inside `public`.
/// A keyword edge that is punctuation (`dea#`) may touch the value directly.
pub fn is_word_boundary(bytes: &[u8], start: usize, end: usize) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b >= 0x80;
    let first_is_word = bytes.get(start).is_some_and(word);
    let last_is_word = end > start && bytes.get(end - 1).is_some_and(word);
    let before_ok = start == 0 || !first_is_word || !bytes.get(start - 1).is_some_and(word);
    let after_ok = !last_is_word || !bytes.get(end).is_some_and(word);
    before_ok && after_ok
}

pub fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_only() {
        let k = Keywords::new([("lic", 1), ("dob", 2)]).unwrap();
        assert_eq!(k.around("the public record", 0, 0, 0, 17), 0);
        assert_eq!(k.around("lic 12345", 4, 9, 10, 0), 1);
        assert_eq!(k.around("DOB: 1/2/1970", 5, 13, 20, 0), 2);
        assert_eq!(k.around("adobe 1/2/1970", 6, 14, 20, 0), 0);
        let k = Keywords::new([("dea#", 4)]).unwrap();
        assert_eq!(k.around("DEA#AB1234145", 4, 13, 10, 0), 4);
        assert_eq!(k.around("xDEA#AB1234145", 5, 14, 10, 0), 0);
    }

    #[test]
    fn window_is_respected_and_unicode_safe() {
        let k = Keywords::builtin_context().unwrap();
        let text = "ssn                                                 é 123";
        let pos = text.find("123").unwrap();
        assert_eq!(k.around(text, pos, pos + 3, 5, 0) & SSN, 0);
        assert_ne!(k.around(text, pos, pos + 3, 200, 0) & SSN, 0);
    }
}
