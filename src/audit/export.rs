//! Streamed export: one record at a time from the store to the writer, so memory stays
//! bounded however long the trail is. Every exported record is authenticated first.

use std::io::Write;

use serde_json::{Map, Value};

use super::record::{self, DecodeError};
use super::{seq_of, AuditError, KeyCache};
use crate::spool::{Keyring, Store, Tree};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// Which records to export. Times are unix milliseconds, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub message: Option<String>,
    /// Matches any person field (sender, recipient(s), DSN target) equal to it,
    /// ignoring ASCII case.
    pub recipient: Option<String>,
}

fn names(v: &Value, addr: &str) -> bool {
    match v {
        Value::String(s) => s.eq_ignore_ascii_case(addr),
        Value::Array(a) => a.iter().any(|x| names(x, addr)),
        _ => false,
    }
}

pub(crate) fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write matching records to `out`; returns how many were written.
pub fn export(
    store: &dyn Store,
    ring: &Keyring,
    filter: &ExportFilter,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let mut keys = KeyCache::new(ring);
    let mut written = 0u64;
    let mut failure: Option<AuditError> = None;
    if format == Format::Csv {
        out.write_all(b"seq,time,kind,message_id,details\n")?;
    }
    store.scan(Tree::Audit, &[], None, &mut |k, v| {
        let seq = seq_of(k).unwrap_or(0);
        let res = (|| -> Result<(), AuditError> {
            let (b, body, mac) = record::parse(v).map_err(|_| AuditError::Corrupt(seq))?;
            if filter.since_ms.is_some_and(|t| b.ts < t)
                || filter.until_ms.is_some_and(|t| b.ts >= t)
                || filter
                    .message
                    .as_ref()
                    .is_some_and(|m| b.msg.as_deref() != Some(m.as_str()))
            {
                return Ok(());
            }
            let key = keys.get(&b.key).ok_or_else(|| AuditError::MissingKey {
                seq,
                key: b.key.clone(),
            })?;
            record::check_mac(key, &b, body, mac).map_err(|_| AuditError::Corrupt(seq))?;
            let private = record::open_private(key, &b).map_err(|e| match e {
                DecodeError::MissingKey(key) => AuditError::MissingKey { seq, key },
                _ => AuditError::Corrupt(seq),
            })?;
            if let Some(r) = &filter.recipient {
                if !private.values().any(|v| names(v, r)) {
                    return Ok(());
                }
            }
            let mut fields: Map<String, Value> = b.data;
            fields.extend(private);
            let time = rfc3339(b.ts);
            match format {
                Format::Jsonl => {
                    let mut obj = Map::new();
                    obj.insert("seq".into(), b.seq.into());
                    obj.insert("time".into(), time.into());
                    obj.insert("kind".into(), b.kind.into());
                    obj.insert("message_id".into(), b.msg.into());
                    obj.extend(fields);
                    serde_json::to_writer(&mut *out, &obj).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                }
                Format::Csv => {
                    let details = Value::Object(fields).to_string();
                    writeln!(
                        out,
                        "{},{},{},{},{}",
                        b.seq,
                        time,
                        csv_field(&b.kind),
                        b.msg.as_deref().unwrap_or(""),
                        csv_field(&details)
                    )?;
                }
            }
            written += 1;
            Ok(())
        })();
        match res {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    out.flush()?;
    match failure {
        Some(e) => Err(e),
        None => Ok(written),
    }
}
