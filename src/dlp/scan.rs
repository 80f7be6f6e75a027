//! The scanner: one regex pass per text finds candidates of every built-in kind, then
//! validators and context decide what is reported and how confidently.

use super::context::{self, Keywords};
use super::extract::{self, Limits};
use super::names as n;
use super::normalize::normalize;
use super::validators as v;
use super::{
    mask, Confidence, DlpConfig, DlpError, Finding, Location, PatternDetector, ScanResult,
};
use crate::message::{Source, TextView};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};
use regex_automata::{meta, Input};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;

/// Bytes of context searched before and after a candidate.
const CONTEXT_BEFORE: usize = 80;
const CONTEXT_AFTER: usize = 40;

/// Candidate kinds, in priority order: at one start position the earlier pattern wins
/// (specific shapes before the generic digit run).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Email,
    Mbi,
    Hicn,
    DotSsn,
    Dea,
    Icd,
    Date,
    Phone,
    Num,
    Addr,
}

/// One multi-pattern regex finds candidates of every built-in kind in one pass; the
/// matching pattern's ID gives the kind, so no capture groups are resolved. ASCII word
/// boundaries keep the lazy DFA fast (text is normalised to ASCII digits first).
const PATTERNS: [(Kind, &str); 10] = [
    (
        Kind::Email,
        r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    ),
    // Case-insensitive: lower-case MBIs are accepted only with Medicare context.
    (
        Kind::Mbi,
        r"(?-u:\b)(?i:[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9][0-9]-?[AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9][0-9]-?[AC-HJKMNP-RT-Y]{2}[0-9]{2})(?-u:\b)",
    ),
    (
        Kind::Hicn,
        r"(?-u:\b)[0-9]{3}[ \-]?[0-9]{2}[ \-]?[0-9]{4}[ \-]?[A-Z][0-9A-Z]?(?-u:\b)",
    ),
    // SSNs written with dots: 536.22.8901.
    (
        Kind::DotSsn,
        r"(?-u:\b)[0-9]{3}\.[0-9]{2}\.[0-9]{4}(?-u:\b)",
    ),
    // Case-insensitive: lower-case DEA numbers are accepted only with DEA context.
    (Kind::Dea, r"(?-u:\b)(?i:[A-Z][A-Z9])[0-9]{7}(?-u:\b)"),
    (
        Kind::Icd,
        r"(?-u:\b)[A-TV-Z][0-9][0-9AB](?:\.[0-9A-Z]{1,4})?(?-u:\b)",
    ),
    (
        Kind::Date,
        r"(?-u:\b)(?:[0-9]{1,2}[/.\-][0-9]{1,2}[/.\-][0-9]{2,4}|[0-9]{4}-[0-9]{2}-[0-9]{2}|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? [0-9]{1,2},? [0-9]{4})(?-u:\b)",
    ),
    (
        Kind::Phone,
        r"\([0-9]{3}\) ?[0-9]{3}[\-. ][0-9]{4}(?-u:\b)|(?-u:\b)[0-9]{3}\.[0-9]{3}\.[0-9]{4}(?-u:\b)|\+1[ \-.]?[0-9]{3}[ \-.][0-9]{3}[ \-.][0-9]{4}(?-u:\b)",
    ),
    (Kind::Num, r"(?-u:\b)[0-9](?:[ \-]?[0-9]){7,18}(?-u:\b)"),
    (
        Kind::Addr,
        r"(?-u:\b)[0-9]{1,5} (?:[A-Z][a-z]+ ){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Circle|Cir)(?-u:\b)",
    ),
];

struct Custom {
    name: String,
    re: Regex,
    confidence: Confidence,
    context: Option<Keywords>,
}

struct Dict {
    name: String,
    confidence: Confidence,
    health: bool,
}

pub struct Scanner {
    candidates: meta::Regex,
    context: Keywords,
    health: Keywords,
    custom: Vec<Custom>,
    dict: Option<(AhoCorasick, Vec<usize>)>,
    dicts: Vec<Dict>,
    disabled: HashSet<String>,
    identifiers: HashSet<String>,
    health_detectors: HashSet<String>,
    hasher: RandomState,
    limits: Limits,
}

impl Scanner {
    pub fn new(cfg: &DlpConfig) -> Result<Scanner, DlpError> {
        let keywords = |e: String| DlpError::Keywords(e);
        let candidates =
            meta::Regex::new_many(&PATTERNS.map(|(_, p)| p)).map_err(|e| DlpError::BadPattern {
                name: "built-in".into(),
                reason: e.to_string(),
            })?;
        let mut names: HashSet<String> = n::ALL.iter().map(|s| s.to_string()).collect();
        let mut identifiers: HashSet<String> = [
            n::SSN,
            n::ITIN,
            n::MBI,
            n::HICN,
            n::MRN,
            n::DOB,
            n::PATIENT_NAME,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut health_detectors: HashSet<String> =
            [n::ICD10, n::NPI, n::DEA, n::MBI, n::HICN, n::HEALTH_TERM]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let mut custom = Vec::new();
        for (d, is_mrn) in cfg
            .mrn
            .iter()
            .map(|d| (d, true))
            .chain(cfg.custom.iter().map(|d| (d, false)))
        {
            let name = if is_mrn {
                n::MRN.to_string()
            } else {
                let name = d.name.clone().unwrap_or_default();
                if name.is_empty() || !names.insert(name.clone()) {
                    return Err(DlpError::DuplicateName(name));
                }
                name
            };
            custom.push(build_custom(name.clone(), d)?);
            if d.identifier {
                identifiers.insert(name.clone());
            }
            if d.health {
                health_detectors.insert(name);
            }
        }
        let mut words = Vec::new();
        let mut owner = Vec::new();
        let mut dicts = Vec::new();
        for (i, d) in cfg.dictionary.iter().enumerate() {
            if d.words.is_empty() {
                return Err(DlpError::EmptyDictionary(d.name.clone()));
            }
            if !names.insert(d.name.clone()) {
                return Err(DlpError::DuplicateName(d.name.clone()));
            }
            for w in &d.words {
                words.push(w.clone());
                owner.push(i);
            }
            dicts.push(Dict {
                name: d.name.clone(),
                confidence: d.confidence,
                health: d.health,
            });
        }
        let dict = if words.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&words)
                .map_err(|e| DlpError::Keywords(e.to_string()))?;
            Some((ac, owner))
        };
        for d in &dicts {
            if d.health {
                health_detectors.insert(d.name.clone());
            }
        }
        Ok(Scanner {
            candidates,
            context: Keywords::builtin_context().map_err(keywords)?,
            health: Keywords::health_terms().map_err(keywords)?,
            custom,
            dict,
            dicts,
            disabled: cfg.disable.iter().cloned().collect(),
            identifiers,
            health_detectors,
            hasher: RandomState::new(),
            limits: cfg.limits.clone(),
        })
    }

    /// The attachment extraction limits this scanner applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Scan every segment of the view and the text extracted from its attachments;
    /// undecodable parts and extraction flags become findings too.
    pub fn scan(&self, view: &TextView) -> ScanResult {
        let mut findings = Vec::new();
        for seg in &view.segments {
            let text = normalize(&seg.text);
            let mut out = Out {
                scanner: self,
                source: seg.source,
                part: seg.part,
                origin: None,
                findings: &mut findings,
            };
            self.scan_builtin(&text, &mut out);
            self.scan_custom(&text, &mut out);
        }
        for u in &view.undecodable {
            findings.push(Finding {
                detector: n::UNDECODABLE.to_string(),
                location: Location {
                    source: Source::Body,
                    part: u.part,
                    offset: 0,
                },
                confidence: Confidence::High,
                masked: u.reason.to_string(),
                fingerprint: u.part as u64,
                origin: None,
                origin_redacted: None,
            });
        }
        let ext = if view.blobs.is_empty() {
            extract::Extraction::default()
        } else {
            extract::run(&view.blobs, &self.limits)
        };
        let clinical = self.scan_extraction(&ext, &mut findings);
        let hipaa_phi = self.hipaa(view, &ext, &findings, clinical);
        let mut distinct: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
        for f in &findings {
            distinct
                .entry(f.detector.clone())
                .or_default()
                .insert(f.fingerprint);
        }
        ScanResult {
            counts: distinct.into_iter().map(|(k, s)| (k, s.len())).collect(),
            findings,
            hipaa_phi,
        }
    }

    /// Text, structured fields and flags from attachments. Returns whether a clinical
    /// record (HL7, CDA, FHIR) yielded a patient identifier: health information by
    /// definition, for the HIPAA rule.
    fn scan_extraction(&self, ext: &extract::Extraction, findings: &mut Vec<Finding>) -> bool {
        let part_of = |o: &extract::Origin| o.chain.first().map_or(0, |n| n.index);
        for (origin, text) in &ext.texts {
            let text = normalize(text);
            let mut out = Out {
                scanner: self,
                source: Source::Attachment,
                part: part_of(origin),
                origin: Some(origin),
                findings,
            };
            self.scan_builtin(&text, &mut out);
            self.scan_custom(&text, &mut out);
        }
        let mut clinical = false;
        for f in &ext.fields {
            let mut out = Out {
                scanner: self,
                source: Source::Attachment,
                part: part_of(&f.origin),
                origin: Some(&f.origin),
                findings,
            };
            if self.structured(f, &mut out) {
                let s = f.origin.section.as_deref().unwrap_or_default();
                clinical |= ["hl7:", "cda:", "fhir:"].iter().any(|p| s.starts_with(p));
            }
        }
        for flag in &ext.flags {
            if self.disabled.contains(flag.detector) {
                continue;
            }
            let label = flag.origin.label();
            findings.push(Finding {
                detector: flag.detector.to_string(),
                location: Location {
                    source: Source::Attachment,
                    part: part_of(&flag.origin),
                    offset: 0,
                },
                confidence: Confidence::High,
                masked: flag.reason.to_string(),
                fingerprint: self.hasher.hash_one((flag.detector, &label)),
                origin: Some(label),
                origin_redacted: Some(flag.origin.redacted()),
            });
        }
        clinical
    }

    /// A value from a known field, validated like free text; accepted values are
    /// high confidence (the field says what they are).
    fn structured(&self, f: &extract::Field, out: &mut Out<'_, '_>) -> bool {
        let val = normalize(&f.value);
        let mut buf = [0u8; 32];
        let compact = compact_into(&val, &mut buf);
        let c = Confidence::High;
        match f.detector {
            n::SSN if v::ssn(compact) => out.push_norm(n::SSN, 0, &val, compact, c),
            n::SSN if v::itin(compact) => out.push_norm(n::ITIN, 0, &val, compact, c),
            n::DOB
                if compact.len() == 8 && compact.iter().all(u8::is_ascii_digit) && {
                    let d = |r: std::ops::Range<usize>| {
                        std::str::from_utf8(&compact[r])
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0)
                    };
                    v::birth_date(d(0..4), d(4..6), d(6..8))
                } =>
            {
                out.push_norm(n::DOB, 0, &val, compact, c)
            }
            n::DOB if plausible_date(&val) => out.push_norm(n::DOB, 0, &val, compact, c),
            n::MRN if (3..=32).contains(&compact.len()) => out.push(n::MRN, 0, &val, c),
            n::PATIENT_NAME if val.chars().any(char::is_alphabetic) => {
                // Word order differs between formats (family first or last).
                let mut words: Vec<String> =
                    val.split_whitespace().map(str::to_lowercase).collect();
                words.sort();
                let key = words.join(" ");
                out.push_norm(n::PATIENT_NAME, 0, &val, key.as_bytes(), c)
            }
            _ => return false,
        }
        true
    }

    /// Scan one plain text as a message body (benchmarks, tests).
    pub fn scan_text(&self, text: &str) -> ScanResult {
        self.scan(&TextView::from_text(text))
    }

    /// Identifier plus health information. Health terms are searched only when an
    /// identifier was found, keeping the common no-PHI path to one pass.
    fn hipaa(
        &self,
        view: &TextView,
        ext: &extract::Extraction,
        findings: &[Finding],
        clinical: bool,
    ) -> bool {
        let strong = |f: &&Finding| f.confidence >= Confidence::Medium;
        let has_identifier = findings
            .iter()
            .filter(strong)
            .any(|f| self.identifiers.contains(&f.detector));
        if !has_identifier {
            return false;
        }
        let has_health = findings
            .iter()
            .filter(strong)
            .any(|f| self.health_detectors.contains(&f.detector));
        has_health
            || clinical
            || !self.disabled.contains(n::HEALTH_TERM)
                && (view
                    .segments
                    .iter()
                    .any(|s| self.health.any(&normalize(&s.text)))
                    || ext
                        .texts
                        .iter()
                        .any(|(_, t)| self.health.any(&normalize(t))))
    }

    fn ctx(&self, text: &str, start: usize, end: usize) -> u32 {
        self.context
            .around(text, start, end, CONTEXT_BEFORE, CONTEXT_AFTER)
    }

    fn scan_builtin(&self, text: &str, out: &mut Out<'_, '_>) {
        let mut pos = 0;
        while pos < text.len() {
            let input = Input::new(text).range(pos..);
            let Some(m) = self.candidates.search(&input) else {
                break;
            };
            let kind = PATTERNS
                .get(m.pattern().as_usize())
                .map_or(Kind::Num, |(k, _)| *k);
            let next = if kind == Kind::Num {
                self.digit_run(text, m.start(), m.end(), out)
            } else {
                self.shaped(text, kind, m.start(), m.end(), out);
                m.end()
            };
            pos = context::ceil_boundary(text, next.max(m.start() + 1));
        }
    }

    fn level(&self, text: &str, s: usize, e: usize, bit: u32, base: Confidence) -> Confidence {
        if self.ctx(text, s, e) & bit != 0 {
            Confidence::High
        } else {
            base
        }
    }

    /// Candidates whose regex shape already tells the kind.
    fn shaped(&self, text: &str, kind: Kind, s: usize, e: usize, out: &mut Out<'_, '_>) {
        let val = &text[s..e];
        let mut buf = [0u8; 16];
        let compact = compact_into(val, &mut buf);
        let lower = compact.iter().any(u8::is_ascii_lowercase);
        let mut upper_buf = [0u8; 16];
        let upper = &mut upper_buf[..compact.len()];
        upper.copy_from_slice(compact);
        upper.make_ascii_uppercase();
        let upper = &*upper;
        // Glued to a longer dotted token (an IP address, a version): not an SSN.
        let dotted_glue = |i: Option<usize>| {
            i.and_then(|i| text.as_bytes().get(i))
                .is_some_and(|b| *b == b'.')
        };
        match kind {
            Kind::Email => out.push(n::EMAIL, s, val, Confidence::Low),
            Kind::Mbi
                if lower && v::mbi(upper) && self.ctx(text, s, e) & context::MEDICARE != 0 =>
            {
                out.push_norm(n::MBI, s, val, upper, Confidence::High);
            }
            Kind::Mbi if v::mbi(compact) => {
                let c = self.level(text, s, e, context::MEDICARE, Confidence::Medium);
                out.push_norm(n::MBI, s, val, compact, c);
            }
            Kind::DotSsn
                if !dotted_glue(s.checked_sub(1)) && !dotted_glue(Some(e)) && v::ssn(compact) =>
            {
                let c = self.level(text, s, e, context::SSN, Confidence::Medium);
                out.push_norm(n::SSN, s, val, compact, c);
            }
            Kind::DotSsn
                if !dotted_glue(s.checked_sub(1)) && !dotted_glue(Some(e)) && v::itin(compact) =>
            {
                let c = self.level(text, s, e, context::SSN, Confidence::Medium);
                out.push_norm(n::ITIN, s, val, compact, c);
            }
            Kind::Dea if lower && v::dea(upper) && self.ctx(text, s, e) & context::DEA != 0 => {
                out.push_norm(n::DEA, s, val, upper, Confidence::High);
            }
            Kind::Hicn if v::hicn(compact) => {
                let c = self.level(text, s, e, context::MEDICARE, Confidence::Medium);
                out.push_norm(n::HICN, s, val, compact, c);
            }
            Kind::Dea if v::dea(compact) => {
                let c = self.level(text, s, e, context::DEA, Confidence::Low);
                out.push_norm(n::DEA, s, val, compact, c);
            }
            Kind::Icd if v::icd10(val.as_bytes()) && self.ctx(text, s, e) & context::ICD != 0 => {
                out.push(n::ICD10, s, val, Confidence::Medium);
            }
            Kind::Date if plausible_date(val) && self.ctx(text, s, e) & context::DOB != 0 => {
                out.push(n::DOB, s, val, Confidence::Medium);
            }
            Kind::Phone if !fictional_phone(compact) => {
                out.push_norm(n::PHONE, s, val, compact, Confidence::Low);
            }
            Kind::Addr => out.push(n::ADDRESS, s, val, Confidence::Low),
            _ => {}
        }
    }

    /// A run of digit groups (`\d+` separated by single spaces or dashes). Adjacent
    /// numbers can merge into one run, so try the longest valid sub-run of groups from
    /// each group onwards. Returns where scanning should resume.
    fn digit_run(&self, text: &str, start: usize, end: usize, out: &mut Out<'_, '_>) -> usize {
        let bytes = text.as_bytes();
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut i = start;
        while i < end {
            let g0 = i;
            while i < end && bytes[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((g0, i));
            i += 1; // skip one separator
        }
        let mut resume = end;
        let mut consumed_to = None;
        let mut gi = 0;
        while gi < groups.len() {
            let mut matched = None;
            for gj in (gi..groups.len()).rev() {
                if self.classify(text, &groups[gi..=gj], out) {
                    matched = Some(gj);
                    break;
                }
            }
            match matched {
                Some(gj) => {
                    consumed_to = Some(groups[gj].1);
                    gi = gj + 1;
                }
                None => gi += 1,
            }
        }
        // Groups after the last consumed one may start a number the regex cut short.
        if let Some(c) = consumed_to {
            if c < end {
                resume = c;
            }
        }
        resume
    }

    /// Try one sub-run of digit groups against every numeric detector.
    fn classify(&self, text: &str, groups: &[(usize, usize)], out: &mut Out<'_, '_>) -> bool {
        let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
            return false;
        };
        let (s, e) = (first.0, last.1);
        let bytes = text.as_bytes();
        // Not a fragment of a longer token like a UUID, version or part number.
        let glued = |i: Option<usize>| {
            i.and_then(|i| bytes.get(i)).is_some_and(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b'_')
            })
        };
        let before_glued =
            s >= 2 && matches!(bytes[s - 1], b'-' | b'/' | b'_') && glued(Some(s - 2));
        let after_glued = matches!(bytes.get(e), Some(b'-' | b'/' | b'_')) && glued(Some(e + 1));
        if before_glued || after_glued {
            return false;
        }
        // One kind of separator throughout (not "123 45-6789").
        if groups
            .windows(2)
            .any(|w| bytes[w[0].1] != bytes[groups[0].1])
        {
            return false;
        }
        let mut shape_buf = [0usize; 20];
        let shape = &mut shape_buf[..groups.len().min(20)];
        for (slot, (a, b)) in shape.iter_mut().zip(groups) {
            *slot = b - a;
        }
        let val = &text[s..e];
        let mut buf = [0u8; 20];
        let digits = compact_into(val, &mut buf);
        // Context is looked up only for shapes that need it.
        let level = |bit: u32, base: Confidence| {
            if self.ctx(text, s, e) & bit != 0 {
                Confidence::High
            } else {
                base
            }
        };
        let mut found = true;
        match (&*shape, digits.len()) {
            ([3, 2, 4], 9) if v::ssn(digits) => {
                let c = level(context::SSN, Confidence::Medium);
                out.push_norm(n::SSN, s, val, digits, c);
            }
            ([3, 2, 4], 9) if v::itin(digits) => {
                let c = level(context::SSN, Confidence::Medium);
                out.push_norm(n::ITIN, s, val, digits, c);
            }
            ([9], 9) => {
                // Unformatted nine digits fit SSN, ITIN and ABA: the nearest label decides.
                let near = self.context.nearest(
                    text,
                    s,
                    e,
                    CONTEXT_BEFORE,
                    CONTEXT_AFTER,
                    context::SSN | context::ABA,
                );
                if near & context::SSN != 0 && v::ssn(digits) {
                    out.push_norm(n::SSN, s, val, digits, Confidence::High);
                } else if near & context::SSN != 0 && v::itin(digits) {
                    out.push_norm(n::ITIN, s, val, digits, Confidence::High);
                } else if near & context::ABA != 0 && v::aba(digits) {
                    out.push_norm(n::ABA, s, val, digits, Confidence::High);
                } else {
                    found = false;
                }
            }
            ([10], 10) if v::npi(digits) && self.ctx(text, s, e) & context::NPI != 0 => {
                out.push_norm(n::NPI, s, val, digits, Confidence::High);
            }
            // NPIs written with dashes share the phone shape: the NPI must be named.
            ([3, 3, 4] | [4, 3, 3] | [5, 5], 10)
                if v::npi(digits) && self.ctx(text, s, e) & context::NPI_ID != 0 =>
            {
                out.push_norm(n::NPI, s, val, digits, Confidence::High);
            }
            // ABA routing numbers written in groups (021-000-021, 0210-0002-1).
            ([3, 3, 3] | [4, 4, 1], 9)
                if v::aba(digits)
                    && self.context.nearest(
                        text,
                        s,
                        e,
                        CONTEXT_BEFORE,
                        CONTEXT_AFTER,
                        context::SSN | context::ABA,
                    ) & context::ABA
                        != 0 =>
            {
                out.push_norm(n::ABA, s, val, digits, Confidence::High);
            }
            ([3, 3, 4], 10) | ([1, 3, 3, 4], 11) => {
                if !fictional_phone(digits) {
                    out.push_norm(n::PHONE, s, val, digits, Confidence::Low);
                }
            }
            (sh, 13..=19) if card_shape(sh) && v::card(digits) => {
                let c = level(context::CARD, Confidence::Medium);
                out.push_norm(n::CARD, s, val, digits, c);
            }
            _ => found = false,
        }
        found
    }

    fn scan_custom(&self, text: &str, out: &mut Out<'_, '_>) {
        for c in &self.custom {
            for m in c.re.find_iter(text) {
                if let Some(k) = &c.context {
                    if k.around(text, m.start(), m.end(), CONTEXT_BEFORE, CONTEXT_AFTER) == 0 {
                        continue;
                    }
                }
                out.push(&c.name, m.start(), m.as_str(), c.confidence);
            }
        }
        if let Some((ac, owner)) = &self.dict {
            for m in ac.find_iter(text) {
                if !context::is_word_boundary(text.as_bytes(), m.start(), m.end()) {
                    continue;
                }
                let Some(d) = owner
                    .get(m.pattern().as_usize())
                    .and_then(|i| self.dicts.get(*i))
                else {
                    continue;
                };
                let word = text[m.start()..m.end()].to_ascii_lowercase();
                out.push_norm(&d.name, m.start(), &word, word.as_bytes(), d.confidence);
            }
        }
    }
}

fn build_custom(name: String, d: &PatternDetector) -> Result<Custom, DlpError> {
    let re = RegexBuilder::new(&d.pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| DlpError::BadPattern {
            name: name.clone(),
            reason: e.to_string(),
        })?;
    let context = if d.context.is_empty() {
        None
    } else {
        Some(Keywords::new(d.context.iter().map(|w| (w.as_str(), 1))).map_err(DlpError::Keywords)?)
    };
    Ok(Custom {
        name,
        re,
        confidence: d.confidence,
        context,
    })
}

/// Collects findings for one segment, masking and fingerprinting as it goes.
struct Out<'s, 'f> {
    scanner: &'s Scanner,
    source: Source,
    part: usize,
    origin: Option<&'f extract::Origin>,
    findings: &'f mut Vec<Finding>,
}

impl Out<'_, '_> {
    fn push(&mut self, detector: &str, offset: usize, value: &str, c: Confidence) {
        let key: Vec<u8> = value
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric())
            .collect();
        self.push_norm(detector, offset, value, &key, c);
    }

    /// `key` is the canonical value (separators removed) used for the fingerprint.
    fn push_norm(&mut self, detector: &str, offset: usize, value: &str, key: &[u8], c: Confidence) {
        if self.scanner.disabled.contains(detector) {
            return;
        }
        let fingerprint = self.scanner.hasher.hash_one((detector, key));
        self.findings.push(Finding {
            detector: detector.to_string(),
            location: Location {
                source: self.source,
                part: self.part,
                offset,
            },
            confidence: c,
            masked: mask(value),
            fingerprint,
            origin: self.origin.map(extract::Origin::label),
            origin_redacted: self.origin.map(extract::Origin::redacted),
        });
    }
}

/// The ASCII letters and digits of `val` (up to the buffer's size): the canonical value.
fn compact_into<'b>(val: &str, buf: &'b mut [u8]) -> &'b [u8] {
    let mut n = 0;
    for b in val.bytes().filter(u8::is_ascii_alphanumeric) {
        if n == buf.len() {
            break;
        }
        buf[n] = b;
        n += 1;
    }
    &buf[..n]
}

fn card_shape(shape: &[usize]) -> bool {
    matches!(
        shape,
        [13..=19] | [4, 4, 4, 4] | [4, 4, 4, 4, 3] | [4, 6, 5] | [4, 6, 4] | [4, 4, 4, 1..=4]
    )
}

/// 555-0100 through 555-0199 are reserved for fiction.
fn fictional_phone(digits: &[u8]) -> bool {
    let d: Vec<u8> = digits.iter().copied().filter(u8::is_ascii_digit).collect();
    let local = if d.len() >= 7 {
        &d[d.len() - 7..]
    } else {
        &d[..]
    };
    local.starts_with(b"55501")
}

/// Month/day/year (or ISO, or month name) forming a plausible birth date.
fn plausible_date(val: &str) -> bool {
    let nums: Vec<u32> = val
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    if val.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        // "March 5, 1970": month given by name.
        return matches!(nums.as_slice(), [d, y] if v::birth_date(*y, 1, *d));
    }
    match nums.as_slice() {
        [y, m, d] if *y >= 1000 => v::birth_date(*y, *m, *d),
        [a, b, y] => v::birth_date(*y, *a, *b) || v::birth_date(*y, *b, *a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> ScanResult {
        Scanner::new(&DlpConfig::default()).unwrap().scan_text(text)
    }

    fn count(r: &ScanResult, d: &str) -> usize {
        r.count_at_least(d, Confidence::Medium)
    }

    #[test]
    fn formatted_ssn_found_and_masked() {
        let r = scan("Patient SSN: 536-22-8901, thanks");
        assert_eq!(count(&r, "ssn"), 1);
        assert_eq!(r.findings[0].masked, "***-**-8901");
        assert_eq!(r.findings[0].confidence, Confidence::High);
    }

    #[test]
    fn invalid_ssns_ignored() {
        let r = scan("ssn 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000 078-05-1120");
        assert_eq!(count(&r, "ssn"), 0);
    }

    #[test]
    fn merged_numbers_are_split() {
        let r = scan("SSN 536-22-8901 card 4111 1111 1111 1111");
        assert_eq!(count(&r, "ssn"), 1);
        assert_eq!(count(&r, "card"), 1);
    }

    #[test]
    fn context_required_detectors() {
        assert_eq!(count(&scan("ref 1234567893 attached"), "npi"), 0);
        assert_eq!(count(&scan("Provider NPI: 1234567893"), "npi"), 1);
        assert_eq!(count(&scan("id 021000021"), "aba"), 0);
        assert_eq!(count(&scan("routing number 021000021"), "aba"), 1);
        assert_eq!(count(&scan("Diagnosis: E11.9 today"), "icd10"), 1);
        assert_eq!(count(&scan("Model E11.9 printer"), "icd10"), 0);
        assert_eq!(count(&scan("DOB 03/14/1962"), "dob"), 1);
        assert_eq!(count(&scan("meeting 03/14/2024"), "dob"), 0);
        assert_eq!(count(&scan("the public 03/14/1962"), "dob"), 0);
    }

    #[test]
    fn medicare_and_dea() {
        assert_eq!(count(&scan("Medicare MBI 1EG4-TE5-MK73"), "mbi"), 1);
        assert_eq!(count(&scan("HICN 536228901A"), "hicn"), 1);
        assert_eq!(count(&scan("DEA# AB1234145"), "dea"), 1);
        assert_eq!(count(&scan("DEA# AB1234144"), "dea"), 0);
    }

    #[test]
    fn hard_negatives() {
        let text = "order 550e8400-e29b-41d4-a716-446655440000 zip 02139-4307 v1.2.3 \
                    at 2024-01-15T10:23:45Z call (212) 555-0123 card 4111 1111 1111 1112 \
                    ts 1700000000 tracking 1Z999AA10123456784 9400111899223344556677";
        let r = scan(text);
        for d in ["ssn", "npi", "dea", "mbi", "card", "aba", "hicn"] {
            assert_eq!(count(&r, d), 0, "{d}");
        }
        assert_eq!(r.counts.get("phone"), None);
    }

    #[test]
    fn text_forms_found_by_the_probe() {
        // Each form, then a hard negative beside it.
        assert_eq!(count(&scan("SSN 536.22.8901"), "ssn"), 1);
        assert_eq!(
            count(&scan("SSN 666.22.8901 and host 10.536.22.8901.4"), "ssn"),
            0
        );
        assert_eq!(count(&scan("card 6759 6498 2643 8453"), "card"), 1);
        assert_eq!(count(&scan("card 6759 6498 2643 8454"), "card"), 0);
        assert_eq!(count(&scan("routing number 021-000-021"), "aba"), 1);
        assert_eq!(count(&scan("routing number 0210-0002-1"), "aba"), 1);
        assert_eq!(count(&scan("routing number 021-000-022"), "aba"), 0);
        assert_eq!(count(&scan("ref 021-000-021"), "aba"), 0);
        assert_eq!(count(&scan("NPI: 123-456-7893"), "npi"), 1);
        assert_eq!(count(&scan("NPI: 12345-67893"), "npi"), 1);
        assert_eq!(count(&scan("call the provider at 123-456-7893"), "npi"), 0);
        assert_eq!(count(&scan("NPI: 123-456-7890"), "npi"), 0);
        assert_eq!(count(&scan("Medicare MBI 1eg4-te5-mk73"), "mbi"), 1);
        assert_eq!(count(&scan("token 1eg4te5mk73 in a link"), "mbi"), 0);
        assert_eq!(count(&scan("DEA# ab1234145"), "dea"), 1);
        assert_eq!(count(&scan("DEA# ab1234144"), "dea"), 0);
        assert_eq!(count(&scan("session ab1234145"), "dea"), 0);
    }

    #[test]
    fn hipaa_needs_identifier_and_health() {
        assert!(!scan("SSN 536-22-8901").hipaa_phi);
        assert!(scan("SSN 536-22-8901 patient diagnosed with diabetes").hipaa_phi);
        assert!(!scan("patient diagnosed with diabetes").hipaa_phi);
    }

    #[test]
    fn unicode_disguise_is_seen() {
        let r = scan("SSN \u{FF15}36\u{2013}22\u{2013}89\u{200B}01");
        assert_eq!(count(&r, "ssn"), 1);
    }

    #[test]
    fn custom_mrn_and_dictionary() {
        let cfg: DlpConfig = toml::from_str(
            r#"
            [[mrn]]
            pattern = 'MRN[- ]?[0-9]{7}'
            [[custom]]
            name = "member"
            pattern = 'ACME-[0-9]{6}'
            confidence = "medium"
            context = ["member"]
            [[dictionary]]
            name = "drugs"
            words = ["metformin", "lisinopril"]
            "#,
        )
        .unwrap();
        let s = Scanner::new(&cfg).unwrap();
        let r = s.scan_text(&format!(
            "MRN-1234567 member ACME-123456 takes Metformin;{} ACME-654321",
            " padding".repeat(20)
        ));
        assert_eq!(r.counts.get("mrn"), Some(&1));
        assert_eq!(r.counts.get("member"), Some(&1));
        assert_eq!(r.counts.get("drugs"), Some(&1));
        assert!(r.hipaa_phi);
    }

    #[test]
    fn bad_custom_pattern_is_an_error() {
        let cfg = DlpConfig {
            custom: vec![PatternDetector {
                name: Some("x".into()),
                pattern: "(".into(),
                confidence: Confidence::High,
                context: vec![],
                identifier: false,
                health: false,
            }],
            ..DlpConfig::default()
        };
        assert!(matches!(
            Scanner::new(&cfg),
            Err(DlpError::BadPattern { .. })
        ));
    }

    #[test]
    fn distinct_values_counted_once() {
        let r = scan("SSN 536-22-8901 again 536228901 ssn and 536-22-8901");
        assert_eq!(r.counts.get("ssn"), Some(&1));
    }
}
