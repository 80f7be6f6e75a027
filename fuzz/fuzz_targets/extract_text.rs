//! Attachment extractors for text formats: HL7 v2, RTF, CSV, TSV, FHIR JSON,
//! C-CDA / FHIR XML, and messages. The first byte picks the file name. Never panics,
//! never exceeds its limits, and structured fields stay short. Seeds: files written
//! by scripts/dlp_corpus.py.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::dlp::extract::{run, Blob, Limits};

const NAMES: [&str; 8] = [
    "a.hl7", "a.rtf", "a.csv", "a.tsv", "a.json", "a.xml", "a.eml", "a.txt",
];

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_extracted_bytes: 1 << 20,
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
    assert!(ext.fields.iter().all(|f| f.value.len() <= 256));
});
