//! RTF: the document text without control words, font tables, pictures and other
//! destinations. `\'hh` bytes are Windows-1252, `\uN` is Unicode (with `\ucN` fallback
//! characters skipped). Group depth is capped.

use super::{Ctx, Origin, Res, Stop};

const MAX_GROUPS: usize = 512;

/// Destinations whose content is not document text.
const SKIP: [&str; 14] = [
    "fonttbl",
    "colortbl",
    "stylesheet",
    "info",
    "pict",
    "object",
    "themedata",
    "colorschememapping",
    "datastore",
    "latentstyles",
    "listtable",
    "listoverridetable",
    "rsidtbl",
    "generator",
];

pub(super) fn extract(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin) -> Res {
    let mut out = String::new();
    // Per group: (skipping, unicode fallback count).
    let mut stack: Vec<(bool, usize)> = vec![(false, 1)];
    let mut i = 0;
    let mut pending_skip = 0usize;
    let mut steps = 0u32;
    while i < b.len() {
        steps = steps.wrapping_add(1);
        if steps % 65536 == 0 {
            ctx.tick()?;
        }
        let (skipping, uc) = *stack.last().unwrap_or(&(false, 1));
        let c = b[i];
        match c {
            b'{' => {
                if stack.len() >= MAX_GROUPS {
                    return Err(Stop::Malformed("RTF groups nested too deeply"));
                }
                stack.push((skipping, uc));
                i += 1;
            }
            b'}' => {
                stack.pop();
                if stack.is_empty() {
                    break;
                }
                i += 1;
            }
            b'\\' => {
                i += 1;
                let Some(&n) = b.get(i) else { break };
                if n == b'\'' {
                    let hex = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        if !skipping && pending_skip == 0 {
                            out.push(cp1252(v));
                        }
                        pending_skip = pending_skip.saturating_sub(1);
                    }
                    i += 3;
                    continue;
                }
                if !n.is_ascii_alphabetic() {
                    if n == b'*' {
                        if let Some(top) = stack.last_mut() {
                            top.0 = true;
                        }
                    } else if !skipping && matches!(n, b'\\' | b'{' | b'}') {
                        out.push(char::from(n));
                    } else if !skipping && n == b'~' {
                        out.push(' ');
                    }
                    i += 1;
                    continue;
                }
                let w0 = i;
                while i < b.len() && b[i].is_ascii_alphabetic() && i - w0 < 32 {
                    i += 1;
                }
                let word = std::str::from_utf8(&b[w0..i]).unwrap_or_default();
                let p0 = i;
                if i < b.len() && b[i] == b'-' {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() && i - p0 < 10 {
                    i += 1;
                }
                let param: Option<i64> = std::str::from_utf8(&b[p0..i])
                    .ok()
                    .and_then(|p| p.parse().ok());
                if b.get(i) == Some(&b' ') {
                    i += 1;
                }
                if SKIP.contains(&word) {
                    if let Some(top) = stack.last_mut() {
                        top.0 = true;
                    }
                    continue;
                }
                if skipping {
                    continue;
                }
                match word {
                    "par" | "line" | "row" | "sect" | "page" => out.push('\n'),
                    "tab" | "cell" => out.push('\t'),
                    "uc" => {
                        if let Some(top) = stack.last_mut() {
                            top.1 = param.unwrap_or(1).clamp(0, 8) as usize;
                        }
                    }
                    "u" => {
                        let v = param.unwrap_or(0);
                        let v = if v < 0 { v + 65536 } else { v };
                        if let Some(ch) = u32::try_from(v).ok().and_then(char::from_u32) {
                            out.push(ch);
                        }
                        pending_skip = uc;
                    }
                    _ => {}
                }
            }
            b'\r' | b'\n' => i += 1,
            _ => {
                if !skipping {
                    if pending_skip > 0 {
                        pending_skip -= 1;
                    } else {
                        out.push(char::from(c));
                    }
                }
                i += 1;
            }
        }
    }
    ctx.text(origin.clone(), out)
}

fn cp1252(b: u8) -> char {
    match b {
        0x96 | 0x97 => '-',
        0x91 | 0x92 => '\'',
        0x93 | 0x94 => '"',
        0xA0 => ' ',
        _ => char::from(b),
    }
}
