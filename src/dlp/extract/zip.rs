//! ZIP archives: every entry is sniffed and extracted like an attachment, nested
//! archives and messages one level deeper. Entries are read through a bounded reader:
//! declared sizes are never trusted for allocation, and an entry that expands beyond
//! `max_ratio` or the part's `max_decompressed_bytes` stops the archive.

use super::{extract_one, sniff, Ctx, Origin, Res, Stop};
use std::io::{Cursor, Read};

pub(super) type Archive<'b> = ::zip::ZipArchive<Cursor<&'b [u8]>>;

pub(super) fn open(b: &[u8]) -> Result<Archive<'_>, Stop> {
    ::zip::ZipArchive::new(Cursor::new(b)).map_err(|_| Stop::Malformed("malformed ZIP archive"))
}

/// The bytes of entry `i`, or `None` for directories.
pub(super) fn read_entry(
    ctx: &mut Ctx<'_>,
    ar: &mut Archive<'_>,
    i: usize,
) -> Result<Option<(String, Vec<u8>)>, Stop> {
    let (encrypted, is_dir, compressed) = {
        let raw = ar
            .by_index_raw(i)
            .map_err(|_| Stop::Malformed("malformed ZIP entry"))?;
        (raw.encrypted(), raw.is_dir(), raw.compressed_size())
    };
    if encrypted {
        return Err(Stop::Encrypted);
    }
    if is_dir {
        return Ok(None);
    }
    let mut f = match ar.by_index(i) {
        Ok(f) => f,
        Err(::zip::result::ZipError::UnsupportedArchive(m))
            if m == ::zip::result::ZipError::PASSWORD_REQUIRED =>
        {
            return Err(Stop::Encrypted)
        }
        Err(_) => return Err(Stop::Malformed("unsupported ZIP entry")),
    };
    let name = f.name().to_string();
    let room = ctx
        .limits
        .max_decompressed_bytes
        .saturating_sub(ctx.inflated);
    let by_ratio = compressed
        .max(1)
        .saturating_mul(u64::from(ctx.limits.max_ratio))
        .max(64 * 1024);
    let cap = room.min(by_ratio);
    let mut out = Vec::new();
    let mut buf = [0u8; 32 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A corrupt entry: keep what was read (it is still scanned).
            Err(_) => break,
        };
        if (out.len() + n) as u64 > cap {
            return Err(Stop::Limit(if cap == room {
                "archive expands beyond max_decompressed_bytes"
            } else {
                "archive entry expands beyond max_ratio"
            }));
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() % (1 << 20) < buf.len() {
            ctx.tick()?;
        }
    }
    ctx.inflated += out.len() as u64;
    Ok(Some((name, out)))
}

pub(super) fn extract(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin, depth: u32) -> Res {
    if depth >= ctx.limits.max_depth {
        return Err(Stop::Limit("nesting deeper than max_depth"));
    }
    let mut ar = open(b)?;
    if ar.len() > ctx.limits.max_entries as usize {
        return Err(Stop::Limit("archive has more than max_entries entries"));
    }
    for i in 0..ar.len() {
        ctx.tick()?;
        let Some((name, bytes)) = read_entry(ctx, &mut ar, i)? else {
            continue;
        };
        let base = name.rsplit('/').next().unwrap_or(&name).to_string();
        let format = sniff(Some(&base), "", &bytes);
        let child = origin.child(Some(name), format.as_str(), i + 1);
        extract_one(ctx, format, &bytes, child, depth + 1);
    }
    Ok(())
}
