//! PDF: the text layer of every page, form field values and annotation contents.
//!
//! lopdf decompresses streams without a size limit, so before it sees the file every
//! stream is decoded once here with a bounded decoder (Flate, LZW, ASCII85, the
//! filters lopdf implements): a compression bomb is refused before lopdf can inflate
//! it. lopdf itself bounds reference chains and page-tree depth; the form-field walk
//! below keeps a visited set so a reference loop ends.

use super::{memfind, Ctx, Origin, Res, Stop};
use lopdf::{Dictionary, Document, Object, ObjectId};
use std::collections::HashSet;
use std::io::{Read, Write};

pub(super) fn extract(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin) -> Res {
    check_streams(ctx, b)?;
    let doc = match Document::load_mem(b) {
        Ok(d) => d,
        Err(_) if memfind(b, b"/Encrypt").is_some() => return Err(Stop::Encrypted),
        Err(_) => return Err(Stop::Malformed("malformed PDF")),
    };
    if doc.trailer.get(b"Encrypt").is_ok() {
        return Err(Stop::Encrypted);
    }
    let pages = doc.get_pages();
    let mut any_text = false;
    for (n, id) in &pages {
        ctx.tick()?;
        if let Ok(text) = doc.extract_text(&[*n]) {
            if !text.trim().is_empty() {
                any_text = true;
                ctx.text(origin.with_section(format!("page {n}")), text)?;
            }
        }
        let mut notes = String::new();
        if let Ok(annots) = doc.get_page_annotations(*id) {
            for a in annots {
                for key in [&b"T"[..], b"Contents", b"V"] {
                    if let Some(s) = text_of(&doc, a.get(key).ok()) {
                        notes.push_str(&s);
                        notes.push('\n');
                    }
                }
            }
        }
        if !notes.trim().is_empty() {
            any_text = true;
            ctx.text(origin.with_section(format!("page {n} annotations")), notes)?;
        }
    }
    let mut form = String::new();
    if let Some(fields) = doc
        .catalog()
        .ok()
        .and_then(|c| c.get(b"AcroForm").ok())
        .and_then(|a| deref(&doc, a).as_dict().ok())
        .and_then(|a| a.get(b"Fields").ok())
    {
        let mut seen = HashSet::new();
        walk_fields(ctx, &doc, fields, 0, &mut seen, &mut form)?;
    }
    if !form.trim().is_empty() {
        any_text = true;
        ctx.text(origin.with_section("form fields"), form)?;
    }
    if !any_text && !pages.is_empty() {
        // Pages without a text layer: a scan, which only OCR could read.
        return Err(Stop::Image);
    }
    Ok(())
}

fn deref<'a>(doc: &'a Document, o: &'a Object) -> &'a Object {
    doc.dereference(o).map(|(_, o)| o).unwrap_or(o)
}

fn text_of(doc: &Document, o: Option<&Object>) -> Option<String> {
    let o = deref(doc, o?);
    match o {
        Object::String(..) => lopdf::decode_text_string(o).ok(),
        Object::Name(n) => Some(String::from_utf8_lossy(n).into_owned()),
        _ => None,
    }
}

/// AcroForm fields: `T` (name) and `V` (value), through `Kids`, each object once.
fn walk_fields(
    ctx: &Ctx<'_>,
    doc: &Document,
    fields: &Object,
    depth: usize,
    seen: &mut HashSet<ObjectId>,
    out: &mut String,
) -> Res {
    if depth > 32 {
        return Err(Stop::Limit("form field tree too deep"));
    }
    ctx.tick()?;
    let Ok(arr) = deref(doc, fields).as_array() else {
        return Ok(());
    };
    for item in arr {
        let dict: &Dictionary = match item {
            Object::Reference(id) => {
                if !seen.insert(*id) {
                    continue;
                }
                match doc.get_dictionary(*id) {
                    Ok(d) => d,
                    Err(_) => continue,
                }
            }
            Object::Dictionary(d) => d,
            _ => continue,
        };
        let name = text_of(doc, dict.get(b"T").ok());
        let value = text_of(doc, dict.get(b"V").ok());
        if let Some(v) = value {
            out.push_str(&format!("{}: {v}\n", name.unwrap_or_default()));
        }
        if let Ok(kids) = dict.get(b"Kids") {
            walk_fields(ctx, doc, kids, depth + 1, seen, out)?;
        }
    }
    Ok(())
}

/// A writer that fails once more than `limit` bytes have been written to it.
struct Bounded {
    n: u64,
    limit: u64,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n += buf.len() as u64;
        if self.n > self.limit {
            return Err(std::io::Error::other("limit"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decode every stream with bounded decoders and refuse the file when the total
/// exceeds `max_decompressed_bytes` or one stream expands more than `max_ratio`.
fn check_streams(ctx: &mut Ctx<'_>, b: &[u8]) -> Res {
    let limit = ctx.limits.max_decompressed_bytes;
    let ratio = u64::from(ctx.limits.max_ratio);
    let mut total = 0u64;
    let mut pos = 0;
    let mut streams = 0u32;
    while let Some(i) = memfind(&b[pos..], b"stream") {
        let s = pos + i;
        pos = s + 6;
        if s >= 3 && &b[s - 3..s] == b"end" {
            continue;
        }
        let mut d = pos;
        if b.get(d) == Some(&b'\r') {
            d += 1;
        }
        if b.get(d) == Some(&b'\n') {
            d += 1;
        }
        if d == pos {
            continue;
        }
        streams += 1;
        if streams % 64 == 0 {
            ctx.tick()?;
        }
        // The stream's dictionary: from its object header to the keyword.
        let window = &b[s.saturating_sub(1024)..s];
        let dict = match memfind_last(window, b"obj") {
            Some(o) => &window[o..],
            None => window,
        };
        let flate = memfind(dict, b"/FlateDecode").is_some() || memfind(dict, b"/Fl").is_some();
        let lzw = memfind(dict, b"/LZWDecode").is_some() || memfind(dict, b"/LZW").is_some();
        let a85 = memfind(dict, b"/ASCII85Decode").is_some() || memfind(dict, b"/A85").is_some();
        if !flate && !lzw {
            continue;
        }
        // The decoder stops at the end of its own data, so it is given the rest of the
        // file: a wrong or indirect /Length cannot hide part of a bomb.
        let rest = &b[d..];
        let a85_buf;
        let input: &[u8] = if a85 {
            a85_buf = ascii85(rest);
            &a85_buf
        } else {
            rest
        };
        let room = limit.saturating_sub(total);
        let (produced, consumed) = if flate {
            inflate(input, room)
        } else {
            unlzw(input, room)
        };
        if produced > room {
            return Err(Stop::Limit(
                "PDF streams decompress beyond max_decompressed_bytes",
            ));
        }
        if produced > 1 << 20 && produced > consumed.max(1).saturating_mul(ratio) {
            return Err(Stop::Limit("PDF stream expands beyond max_ratio"));
        }
        total += produced;
    }
    Ok(())
}

fn memfind_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Bytes produced (up to room + 1) and consumed by a zlib decode.
fn inflate(input: &[u8], room: u64) -> (u64, u64) {
    let mut dec = flate2::read::ZlibDecoder::new(input);
    let mut sink = Bounded { n: 0, limit: room };
    let mut buf = [0u8; 16 * 1024];
    loop {
        match dec.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sink.write(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    (sink.n, dec.total_in())
}

fn unlzw(input: &[u8], room: u64) -> (u64, u64) {
    let mut dec = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let mut sink = Bounded { n: 0, limit: room };
    let r = dec.into_stream(&mut sink).decode_all(input);
    (sink.n, r.bytes_read as u64)
}

/// ASCII85 up to `~>`; the output is never larger than the input.
fn ascii85(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len().min(1 << 20));
    let mut group = [0u32; 5];
    let mut n = 0;
    for &c in input {
        match c {
            b'~' => break,
            b'z' if n == 0 => out.extend_from_slice(&[0; 4]),
            b'!'..=b'u' => {
                group[n] = u32::from(c - b'!');
                n += 1;
                if n == 5 {
                    let v = group
                        .iter()
                        .fold(0u32, |a, d| a.wrapping_mul(85).wrapping_add(*d));
                    out.extend_from_slice(&v.to_be_bytes());
                    n = 0;
                }
            }
            _ => {}
        }
    }
    if n > 1 {
        for g in group.iter_mut().skip(n) {
            *g = 84;
        }
        let v = group
            .iter()
            .fold(0u32, |a, d| a.wrapping_mul(85).wrapping_add(*d));
        out.extend_from_slice(&v.to_be_bytes()[..n - 1]);
    }
    out
}
