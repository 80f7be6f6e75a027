//! Attachment extractors for binary containers: PDF, ZIP (nested, with messages),
//! DOCX, XLSX, PPTX, ODT/ODS. The first byte picks the file name (a hint; content
//! sniffing decides). Never panics, never exceeds its limits; every flag is one of
//! the three extraction findings. Seeds: files written by scripts/dlp_corpus.py.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::dlp::extract::{run, Blob, Limits};

const NAMES: [&str; 8] = [
    "a.pdf", "a.zip", "a.docx", "a.xlsx", "a.pptx", "a.odt", "a.ods", "a.bin",
];

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_extracted_bytes: 1 << 20,
        max_decompressed_bytes: 4 << 20,
        part_time_ms: 2000,
        ..Limits::default()
    };
    let blob = Blob {
        part: 1,
        name: Some(NAMES[usize::from(*sel) % NAMES.len()].to_string()),
        content_type: "application/octet-stream".into(),
        bytes: bytes.to_vec(),
    };
    let ext = run(&[blob], &limits);
    assert!(ext.extracted <= limits.max_extracted_bytes);
    for f in &ext.flags {
        assert!(matches!(
            f.detector,
            "unscannable-part" | "encrypted-attachment" | "unscanned-image"
        ));
    }
});
