//! HL7 v2 messages: segments and fields. The text is rendered as `PID-19 SSN: value`
//! lines so field meaning is context for the scanner, and the patient identifiers of
//! PID (3, 5, 7, 19) are structure-aware fields (`hl7:PID-19`).

use super::{Ctx, Origin, Res, Stop};
use crate::dlp::names;

/// Field labels that give the scanner context.
fn label(seg: &str, n: usize) -> &'static str {
    match (seg, n) {
        ("PID", 3) => " patient identifier",
        ("PID", 5) => " patient name",
        ("PID", 7) => " date of birth",
        ("PID", 11) => " address",
        ("PID", 13) | ("PID", 14) => " phone",
        ("PID", 18) => " account number",
        ("PID", 19) => " SSN",
        ("PID", 20) => " driver's license",
        ("IN1", 36) => " policy number",
        ("NK1", 2) => " name",
        _ => "",
    }
}

pub(super) fn extract(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin) -> Res {
    let text = String::from_utf8_lossy(b);
    let start = text
        .find("MSH")
        .ok_or(Stop::Malformed("HL7 message without MSH segment"))?;
    let msh = &text[start..];
    let mut chars = msh.chars().skip(3);
    let fs = chars
        .next()
        .ok_or(Stop::Malformed("truncated MSH segment"))?;
    let cs = chars.next().unwrap_or('^');
    let rs = chars.next().unwrap_or('~');
    if fs.is_alphanumeric() || fs.is_whitespace() {
        return Err(Stop::Malformed("invalid HL7 field separator"));
    }
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for (i, seg) in msh
        .split(['\r', '\n', '\x1c', '\x0b'])
        .filter(|s| s.len() >= 3)
        .enumerate()
    {
        if i % 1024 == 0 {
            ctx.tick()?;
        }
        let mut fields = seg.split(fs);
        let name = fields.next().unwrap_or_default();
        // MSH-1 is the separator itself: the first split field is MSH-2.
        let first = if name == "MSH" { 2 } else { 1 };
        for (k, value) in fields.enumerate() {
            let n = k + first;
            if value.is_empty() || name == "MSH" && n == 2 {
                continue;
            }
            let readable = value.replace(cs, " ").replace(rs, ", ");
            out.push_str(&format!(
                "{name}-{n}{}: {}\n",
                label(name, n),
                readable.trim()
            ));
            if name == "PID" {
                pid_field(ctx, origin, n, value, cs, rs);
            }
        }
    }
    ctx.text(origin.with_section("hl7"), out)
}

fn pid_field(ctx: &mut Ctx<'_>, origin: &Origin, n: usize, value: &str, cs: char, rs: char) {
    let section = || origin.with_section(format!("hl7:PID-{n}"));
    match n {
        3 => {
            for rep in value.split(rs) {
                let comps: Vec<&str> = rep.split(cs).collect();
                let id = comps.first().copied().unwrap_or_default();
                // CX-5 identifier type code SS: a Social Security number.
                let detector = if comps.get(4).is_some_and(|t| t.trim() == "SS") {
                    names::SSN
                } else {
                    names::MRN
                };
                ctx.field(section(), detector, id);
            }
        }
        5 => {
            for rep in value.split(rs) {
                let comps: Vec<&str> = rep.split(cs).take(3).collect();
                let mut parts: Vec<&str> = comps.iter().skip(1).copied().collect();
                parts.extend(comps.first());
                let name = parts.join(" ");
                if name.chars().any(char::is_alphabetic) {
                    ctx.field(section(), names::PATIENT_NAME, &name);
                }
            }
        }
        7 => {
            let ts = value.split(cs).next().unwrap_or_default();
            // `get`: a hostile timestamp can have a multi-byte char across byte 8.
            if let Some(date) = ts.get(..8) {
                ctx.field(section(), names::DOB, date);
            }
        }
        19 => ctx.field(
            section(),
            names::SSN,
            value.split(cs).next().unwrap_or_default(),
        ),
        _ => {}
    }
}
