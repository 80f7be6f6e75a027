//! Text out of attachments: PDF, Office Open XML, OpenDocument, RTF, CSV/TSV, HL7 v2,
//! C-CDA, FHIR and ZIP archives (nested, with messages inside). Attachments are
//! hostile input: every extractor works within [`Limits`] (extracted bytes,
//! decompressed bytes, nesting depth, expansion ratio, archive entries, wall time per
//! part). Crossing a limit, or meeting a file that cannot be read, is a flag
//! (`unscannable-part`, `encrypted-attachment`, `unscanned-image`) that policy
//! decides on; it is never a panic, a hang or an unbounded allocation.

mod hl7;
mod json;
mod office;
mod pdf;
mod rtf;
mod table;
mod xml;
mod zip;

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Detector names of the flags extraction raises.
pub const UNSCANNABLE: &str = "unscannable-part";
pub const ENCRYPTED: &str = "encrypted-attachment";
pub const IMAGE: &str = "unscanned-image";

/// The `[dlp.limits]` table of the policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Text extracted from all attachments of one message, in bytes.
    pub max_extracted_bytes: u64,
    /// Bytes decompressed out of one attachment (PDF streams, archive entries).
    pub max_decompressed_bytes: u64,
    /// Containers inside containers (zip in zip, message in zip) followed.
    pub max_depth: u32,
    /// Largest decompressed/compressed ratio accepted for one stream or entry.
    pub max_ratio: u32,
    /// Entries read from one archive.
    pub max_entries: u32,
    /// Wall time spent on one attachment, in milliseconds.
    pub part_time_ms: u64,
    /// Messages with attachments extracted at once (the worker pool); 0 = one per core.
    pub workers: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_extracted_bytes: 32 << 20,
            max_decompressed_bytes: 64 << 20,
            max_depth: 3,
            max_ratio: 200,
            max_entries: 1000,
            part_time_ms: 5000,
            workers: 0,
        }
    }
}

impl Limits {
    /// Names the first out-of-range key, for `check-config`.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, bool, &str); 6] = [
            (
                "max_extracted_bytes",
                (1024..=1 << 34).contains(&self.max_extracted_bytes),
                "1024..=17179869184",
            ),
            (
                "max_decompressed_bytes",
                (1024..=1 << 34).contains(&self.max_decompressed_bytes),
                "1024..=17179869184",
            ),
            ("max_depth", self.max_depth <= 16, "0..=16"),
            (
                "max_ratio",
                (1..=100_000).contains(&self.max_ratio),
                "1..=100000",
            ),
            (
                "max_entries",
                (1..=1_000_000).contains(&self.max_entries),
                "1..=1000000",
            ),
            (
                "part_time_ms",
                (1..=600_000).contains(&self.part_time_ms),
                "1..=600000",
            ),
        ];
        for (key, ok, range) in checks {
            if !ok {
                return Err(format!("[dlp.limits] {key}: must be in {range}"));
            }
        }
        if self.workers > 1024 {
            return Err("[dlp.limits] workers: must be in 0..=1024".into());
        }
        Ok(())
    }

    /// The worker pool's size.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n as usize,
        }
    }
}

/// One container step on the way to a piece of text: the message part, then entries
/// of archives inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File name as given (may itself be PHI: shown to the operator, never logged).
    pub name: Option<String>,
    /// Short format name (`pdf`, `zip`, `xlsx`...).
    pub format: &'static str,
    /// Message part number, or entry number inside the parent archive.
    pub index: usize,
}

/// Where extracted text came from: `attachment:batch.zip/claims.xlsx sheet 1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub chain: Vec<Node>,
    /// Section inside the innermost file (`page 2`, `sheet 1`, `hl7:PID-19`).
    pub section: Option<String>,
}

impl Origin {
    fn with_section(&self, s: impl Into<String>) -> Origin {
        Origin {
            chain: self.chain.clone(),
            section: Some(s.into()),
        }
    }

    fn child(&self, name: Option<String>, format: &'static str, index: usize) -> Origin {
        let mut chain = self.chain.clone();
        chain.push(Node {
            name,
            format,
            index,
        });
        Origin {
            chain,
            section: None,
        }
    }

    /// With file names, for the operator (`phigate dlp scan`, `policy explain`).
    pub fn label(&self) -> String {
        let path: Vec<String> = self
            .chain
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.name {
                Some(name) => name.clone(),
                None if i == 0 => format!("part {}", n.index),
                None => format!("entry {}", n.index),
            })
            .collect();
        self.render(path.join("/"))
    }

    /// Without file names (which can carry PHI), for the audit record:
    /// `attachment:part 2 (zip)/entry 1 (xlsx) sheet 1`.
    pub fn redacted(&self) -> String {
        let path: Vec<String> = self
            .chain
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let what = if i == 0 { "part" } else { "entry" };
                format!("{what} {} ({})", n.index, n.format)
            })
            .collect();
        self.render(path.join("/"))
    }

    fn render(&self, path: String) -> String {
        match &self.section {
            Some(s) => format!("attachment:{path} {s}"),
            None => format!("attachment:{path}"),
        }
    }
}

/// An attachment handed to extraction: the decoded bytes of one MIME part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub part: usize,
    pub name: Option<String>,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A value an extractor found in a known field (HL7 PID-19, a CDA SSN id, a FHIR
/// identifier): the scanner validates it with the same validator as free text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub origin: Origin,
    pub detector: &'static str,
    pub value: String,
}

/// A part extraction could not (fully) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub origin: Origin,
    pub detector: &'static str,
    pub reason: &'static str,
}

/// Everything extraction produced for one message.
#[derive(Debug, Default)]
pub struct Extraction {
    pub texts: Vec<(Origin, String)>,
    pub fields: Vec<Field>,
    pub flags: Vec<Flag>,
    /// Bytes of text extracted (bounded by `max_extracted_bytes`).
    pub extracted: u64,
}

/// Why an extractor stopped early. Text produced before the stop is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A limit was reached (the reason names it).
    Limit(&'static str),
    Encrypted,
    Image,
    Malformed(&'static str),
}

impl Stop {
    fn flag(self, origin: Origin) -> Flag {
        let (detector, reason) = match self {
            Stop::Limit(r) => (UNSCANNABLE, r),
            Stop::Malformed(r) => (UNSCANNABLE, r),
            Stop::Encrypted => (ENCRYPTED, "encrypted"),
            Stop::Image => (IMAGE, "image without a text layer"),
        };
        Flag {
            origin,
            detector,
            reason,
        }
    }
}

pub(crate) type Res = Result<(), Stop>;

/// The state one message's extraction shares: limits, the text budget and the output.
pub(crate) struct Ctx<'l> {
    pub limits: &'l Limits,
    pub out: Extraction,
    /// Bytes decompressed out of the current top-level part.
    pub inflated: u64,
    deadline: Instant,
}

impl Ctx<'_> {
    /// Fails once the current part's wall-time budget is spent.
    pub fn tick(&self) -> Res {
        if Instant::now() > self.deadline {
            Err(Stop::Limit("wall time per part exceeded"))
        } else {
            Ok(())
        }
    }

    /// Add extracted text, within the per-message budget.
    pub fn text(&mut self, origin: Origin, text: String) -> Res {
        if text.trim().is_empty() {
            return Ok(());
        }
        let len = text.len() as u64;
        if self.out.extracted + len > self.limits.max_extracted_bytes {
            let room = self
                .limits
                .max_extracted_bytes
                .saturating_sub(self.out.extracted) as usize;
            let cut = floor_boundary(&text, room);
            self.out.extracted += cut as u64;
            self.out.texts.push((origin, text[..cut].to_string()));
            return Err(Stop::Limit("extracted text exceeds max_extracted_bytes"));
        }
        self.out.extracted += len;
        self.out.texts.push((origin, text));
        Ok(())
    }

    pub fn field(&mut self, origin: Origin, detector: &'static str, value: &str) {
        let value = value.trim();
        if !value.is_empty() && value.len() <= 256 && self.out.fields.len() < 100_000 {
            self.out.fields.push(Field {
                origin,
                detector,
                value: value.to_string(),
            });
        }
    }

    fn flag(&mut self, stop: Stop, origin: Origin) {
        // One flag per origin and kind is enough for policy.
        let f = stop.flag(origin);
        if !self.out.flags.contains(&f) {
            self.out.flags.push(f);
        }
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// File formats extraction knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Pdf,
    Zip,
    Docx,
    Xlsx,
    Pptx,
    Odf,
    Rtf,
    Csv,
    Tsv,
    Hl7,
    Json,
    Xml,
    Eml,
    Image,
    Cfb,
    Text,
    Unknown,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Zip => "zip",
            Format::Docx => "docx",
            Format::Xlsx => "xlsx",
            Format::Pptx => "pptx",
            Format::Odf => "odf",
            Format::Rtf => "rtf",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Hl7 => "hl7",
            Format::Json => "json",
            Format::Xml => "xml",
            Format::Eml => "eml",
            Format::Image => "image",
            Format::Cfb => "ole",
            Format::Text => "text",
            Format::Unknown => "binary",
        }
    }
}

fn ext_of(name: Option<&str>) -> String {
    name.and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Content first (names and types lie), then name and type.
pub(crate) fn sniff(name: Option<&str>, ctype: &str, b: &[u8]) -> Format {
    let ext = ext_of(name);
    let head = &b[..b.len().min(1024)];
    if memfind(head, b"%PDF-").is_some() {
        return Format::Pdf;
    }
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
        return match ext.as_str() {
            "docx" | "docm" | "dotx" => Format::Docx,
            "xlsx" | "xlsm" => Format::Xlsx,
            "pptx" | "pptm" => Format::Pptx,
            "odt" | "ods" | "odp" => Format::Odf,
            // office::detect looks inside when the name does not say.
            _ => Format::Zip,
        };
    }
    if b.starts_with(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1") {
        return Format::Cfb;
    }
    let image = b.starts_with(b"\x89PNG")
        || b.starts_with(b"\xFF\xD8\xFF")
        || b.starts_with(b"GIF8")
        || b.starts_with(b"II*\0")
        || b.starts_with(b"MM\0*")
        || b.starts_with(b"BM") && matches!(ext.as_str(), "bmp")
        || b.get(128..132) == Some(b"DICM")
        || matches!(ext.as_str(), "dcm" | "dicom")
        || ctype.starts_with("image/")
        || ctype == "application/dicom";
    if image {
        return Format::Image;
    }
    if b.starts_with(b"{\\rtf") {
        return Format::Rtf;
    }
    let trimmed = trim_start(b);
    if trimmed.starts_with(b"MSH|") || trimmed.starts_with(b"MSH^") {
        return Format::Hl7;
    }
    if ext == "eml" || ctype == "message/rfc822" {
        return Format::Eml;
    }
    match ext.as_str() {
        "csv" => return Format::Csv,
        "tsv" | "tab" => return Format::Tsv,
        "hl7" => return Format::Hl7,
        _ => {}
    }
    if ctype == "text/csv" || ctype == "application/csv" {
        return Format::Csv;
    }
    if ctype == "text/tab-separated-values" {
        return Format::Tsv;
    }
    if matches!(trimmed.first(), Some(b'{' | b'['))
        && (ext == "json" || ctype.contains("json") || memfind(head, b"\"resourceType\"").is_some())
    {
        return Format::Json;
    }
    if trimmed.starts_with(b"<")
        && (ext == "xml" || ctype.contains("xml") || trimmed.starts_with(b"<?xml"))
    {
        return Format::Xml;
    }
    if std::str::from_utf8(b).is_ok() || ctype.starts_with("text/") {
        return Format::Text;
    }
    Format::Unknown
}

fn trim_start(b: &[u8]) -> &[u8] {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_whitespace() || **c == 0x0b)
        .count();
    &b[n..]
}

pub(crate) fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Whether an attachment needs an extractor rather than being scanned as plain text.
pub fn wants(name: Option<&str>, ctype: &str, bytes: &[u8]) -> bool {
    !matches!(sniff(name, ctype, bytes), Format::Text | Format::Unknown)
}

/// Whether extraction can read this kind of attachment at all (for `AttachmentInfo`).
pub fn readable(name: Option<&str>, ctype: &str, bytes: &[u8]) -> bool {
    !matches!(
        sniff(name, ctype, bytes),
        Format::Image | Format::Unknown | Format::Cfb
    )
}

/// Extract every blob of a message. Each top-level part has its own wall-time budget;
/// the text budget is shared by the message.
pub fn run(blobs: &[Blob], limits: &Limits) -> Extraction {
    let mut ctx = Ctx {
        limits,
        out: Extraction::default(),
        inflated: 0,
        deadline: Instant::now(),
    };
    for blob in blobs {
        ctx.deadline = Instant::now() + Duration::from_millis(limits.part_time_ms);
        ctx.inflated = 0;
        let format = sniff(blob.name.as_deref(), &blob.content_type, &blob.bytes);
        let origin = Origin::default().child(blob.name.clone(), format.as_str(), blob.part);
        if ctx.out.extracted >= limits.max_extracted_bytes {
            ctx.flag(
                Stop::Limit("extracted text exceeds max_extracted_bytes"),
                origin,
            );
            continue;
        }
        extract_one(&mut ctx, format, &blob.bytes, origin, 0);
    }
    ctx.out
}

/// Extract one file (top-level or inside an archive) and turn a stop into a flag.
/// Extractors are also guarded against panics: a bug in a parser on hostile input
/// becomes `unscannable-part`, never a dead session.
pub(crate) fn extract_one(ctx: &mut Ctx<'_>, format: Format, b: &[u8], origin: Origin, depth: u32) {
    // Under the fuzzer panics must surface: they are bugs to fix, not to hide.
    if cfg!(fuzzing) {
        if let Err(stop) = dispatch(ctx, format, b, &origin, depth) {
            ctx.flag(stop, origin);
        }
        return;
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(ctx, format, b, &origin, depth)
    }));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(stop)) => ctx.flag(stop, origin),
        Err(_) => ctx.flag(
            Stop::Malformed("extractor failed on malformed input"),
            origin,
        ),
    }
}

fn dispatch(ctx: &mut Ctx<'_>, format: Format, b: &[u8], origin: &Origin, depth: u32) -> Res {
    ctx.tick()?;
    match format {
        Format::Pdf => pdf::extract(ctx, b, origin),
        Format::Zip => {
            let inner = office::detect(b);
            if inner != Format::Zip {
                return dispatch_office(ctx, inner, b, origin);
            }
            zip::extract(ctx, b, origin, depth)
        }
        Format::Docx | Format::Xlsx | Format::Pptx | Format::Odf => {
            dispatch_office(ctx, format, b, origin)
        }
        Format::Rtf => rtf::extract(ctx, b, origin),
        Format::Csv => table::extract(ctx, b, origin, b','),
        Format::Tsv => table::extract(ctx, b, origin, b'\t'),
        Format::Hl7 => hl7::extract(ctx, b, origin),
        Format::Json => json::extract(ctx, b, origin),
        Format::Xml => xml::extract_document(ctx, b, origin),
        Format::Eml => eml(ctx, b, origin, depth),
        Format::Image => Err(Stop::Image),
        Format::Cfb => {
            // OOXML files encrypted with a password are CFB containers holding an
            // `EncryptedPackage` stream; other CFB files are legacy binary Office.
            let marker: Vec<u8> = "EncryptedPackage".bytes().flat_map(|c| [c, 0]).collect();
            if memfind(b, &marker).is_some() {
                Err(Stop::Encrypted)
            } else {
                Err(Stop::Malformed("legacy binary Office format not supported"))
            }
        }
        Format::Text => ctx.text(origin.clone(), String::from_utf8_lossy(b).into_owned()),
        Format::Unknown => Ok(()),
    }
}

fn dispatch_office(ctx: &mut Ctx<'_>, format: Format, b: &[u8], origin: &Origin) -> Res {
    // The chain's last node names the format actually found.
    let mut origin = origin.clone();
    if let Some(last) = origin.chain.last_mut() {
        last.format = format.as_str();
    }
    office::extract(ctx, format, b, &origin)
}

/// A message inside an archive: its own text view, then its attachments, one level deeper.
fn eml(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin, depth: u32) -> Res {
    if depth >= ctx.limits.max_depth {
        return Err(Stop::Limit("nesting deeper than max_depth"));
    }
    let view = crate::message::TextView::from_bytes(b);
    for seg in &view.segments {
        ctx.text(origin.with_section(seg.source.as_str()), seg.text.clone())?;
    }
    for blob in &view.blobs {
        let format = sniff(blob.name.as_deref(), &blob.content_type, &blob.bytes);
        let child = origin.child(blob.name.clone(), format.as_str(), blob.part);
        extract_one(ctx, format, &blob.bytes, child, depth + 1);
        ctx.tick()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
