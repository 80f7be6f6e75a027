//! XML: text of Office/OpenDocument parts, spreadsheet cells, and standalone clinical
//! documents (C-CDA/CDA, FHIR XML) with structure-aware fields. quick-xml is a pull
//! parser without DTD or entity expansion, so no billion-laughs; depth is capped.

use super::{Ctx, Origin, Res, Stop};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::borrow::Cow;

const MAX_DEPTH: usize = 256;

pub(super) enum Ev<'e, 'a> {
    Start(&'e BytesStart<'a>),
    End(&'e [u8]),
    Text(Cow<'e, str>),
}

/// Pull every event through `f`. A syntax error ends the walk as `Malformed` after
/// `f` has seen everything before it.
pub(super) fn walk(ctx: &Ctx<'_>, b: &[u8], mut f: impl FnMut(Ev<'_, '_>) -> Res) -> Res {
    let mut r = Reader::from_reader(b);
    r.config_mut().check_end_names = false;
    let mut depth = 0usize;
    let mut events = 0u32;
    loop {
        events = events.wrapping_add(1);
        if events % 4096 == 0 {
            ctx.tick()?;
        }
        match r.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Stop::Malformed("XML nested too deeply"));
                }
                f(Ev::Start(&e))?;
            }
            Ok(Event::Empty(e)) => {
                f(Ev::Start(&e))?;
                f(Ev::End(e.local_name().as_ref()))?;
            }
            Ok(Event::End(e)) => {
                depth = depth.saturating_sub(1);
                f(Ev::End(e.local_name().as_ref()))?;
            }
            Ok(Event::Text(t)) => {
                let s = match t.unescape() {
                    Ok(s) => s,
                    Err(_) => Cow::Owned(String::from_utf8_lossy(&t).into_owned()),
                };
                f(Ev::Text(s))?;
            }
            Ok(Event::CData(t)) => {
                f(Ev::Text(Cow::Owned(
                    String::from_utf8_lossy(&t).into_owned(),
                )))?;
            }
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(_) => return Err(Stop::Malformed("malformed XML")),
        }
    }
}

pub(super) fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| match a.unescape_value() {
            Ok(v) => v.into_owned(),
            Err(_) => String::from_utf8_lossy(&a.value).into_owned(),
        })
}

/// Text with paragraph, row and cell breaks (WordprocessingML, DrawingML, ODF).
pub(super) fn plain_text(ctx: &Ctx<'_>, b: &[u8]) -> Result<String, Stop> {
    let mut out = String::new();
    let r = walk(ctx, b, |ev| {
        match ev {
            Ev::Text(t) => out.push_str(&t),
            Ev::Start(e) => match e.local_name().as_ref() {
                b"tab" | b"tc" | b"table-cell" => out.push('\t'),
                b"br" | b"cr" | b"line-break" => out.push('\n'),
                b"s" => out.push(' '),
                _ => {}
            },
            Ev::End(n) => {
                if matches!(n, b"p" | b"tr" | b"h" | b"table-row" | b"comment") {
                    out.push('\n');
                }
            }
        }
        Ok(())
    });
    finish(out, r)
}

/// Keep what was read before a malformed tail: it is scanned, and the flag is raised
/// by the caller through `Err` only when nothing was read.
fn finish<T: Default + IsEmpty>(v: T, r: Res) -> Result<T, Stop> {
    match r {
        Ok(()) => Ok(v),
        Err(Stop::Malformed(_)) if !v.is_empty() => Ok(v),
        Err(e) => Err(e),
    }
}

pub(super) trait IsEmpty {
    fn is_empty(&self) -> bool;
}
impl IsEmpty for String {
    fn is_empty(&self) -> bool {
        self.trim().is_empty()
    }
}
impl<T> IsEmpty for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

/// `xl/sharedStrings.xml`: one string per `<si>`.
pub(super) fn shared_strings(ctx: &Ctx<'_>, b: &[u8]) -> Result<Vec<String>, Stop> {
    let mut v = Vec::new();
    let mut cur = String::new();
    let mut in_t = false;
    let r = walk(ctx, b, |ev| {
        match ev {
            Ev::Start(e) if e.local_name().as_ref() == b"t" => in_t = true,
            Ev::End(b"t") => in_t = false,
            Ev::End(b"si") => v.push(std::mem::take(&mut cur)),
            Ev::Text(t) if in_t => cur.push_str(&t),
            _ => {}
        }
        Ok(())
    });
    finish(v, r)
}

/// Column number of a cell reference like `BC12`.
fn column(r: &str) -> usize {
    r.bytes()
        .take_while(u8::is_ascii_alphabetic)
        .take(3)
        .fold(0usize, |a, c| {
            a * 26 + usize::from(c.to_ascii_uppercase() - b'A' + 1)
        })
        .saturating_sub(1)
}

pub(super) type Rows = Vec<Vec<(usize, String)>>;

/// Rows of one worksheet: (column, value) per cell, shared strings resolved.
pub(super) fn xlsx_rows(ctx: &Ctx<'_>, b: &[u8], shared: &[String]) -> Result<Rows, Stop> {
    let mut rows: Rows = Vec::new();
    let mut row = Vec::new();
    let (mut col, mut next_col) = (0usize, 0usize);
    let mut kind = String::new();
    let mut val = String::new();
    let mut in_val = false;
    let r = walk(ctx, b, |ev| {
        match ev {
            Ev::Start(e) => match e.local_name().as_ref() {
                b"c" => {
                    col = attr(e, b"r").map_or(next_col, |r| column(&r));
                    kind = attr(e, b"t").unwrap_or_default();
                    val.clear();
                }
                b"v" | b"t" => in_val = true,
                _ => {}
            },
            Ev::Text(t) if in_val => val.push_str(&t),
            Ev::End(n) => match n {
                b"v" | b"t" => in_val = false,
                b"c" => {
                    let v = if kind == "s" {
                        val.trim()
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| shared.get(i).cloned())
                            .unwrap_or_default()
                    } else {
                        std::mem::take(&mut val)
                    };
                    if !v.is_empty() {
                        row.push((col, v));
                    }
                    next_col = col + 1;
                }
                b"row" => {
                    rows.push(std::mem::take(&mut row));
                    next_col = 0;
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    });
    finish(rows, r)
}

/// OpenDocument spreadsheet tables: rows of cells, repeated columns honoured (capped).
pub(super) fn ods_tables(ctx: &Ctx<'_>, b: &[u8]) -> Result<Vec<Rows>, Stop> {
    let mut tables: Vec<Rows> = Vec::new();
    let mut rows: Rows = Vec::new();
    let mut row = Vec::new();
    let mut col = 0usize;
    let mut repeat = 1usize;
    let mut cell = String::new();
    let mut in_cell = false;
    let r = walk(ctx, b, |ev| {
        match ev {
            Ev::Start(e) => match e.local_name().as_ref() {
                b"table-cell" | b"covered-table-cell" => {
                    in_cell = true;
                    cell.clear();
                    repeat = attr(e, b"number-columns-repeated")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1usize)
                        .clamp(1, 1 << 14);
                }
                b"p" if in_cell && !cell.is_empty() => cell.push(' '),
                _ => {}
            },
            Ev::Text(t) if in_cell => cell.push_str(&t),
            Ev::End(n) => match n {
                b"table-cell" | b"covered-table-cell" => {
                    in_cell = false;
                    if !cell.trim().is_empty() {
                        // Repeated non-empty cells are rare; a few copies keep context.
                        for k in 0..repeat.min(8) {
                            row.push((col + k, cell.clone()));
                        }
                    }
                    col += repeat;
                }
                b"table-row" => {
                    rows.push(std::mem::take(&mut row));
                    col = 0;
                }
                b"table" => tables.push(std::mem::take(&mut rows)),
                _ => {}
            },
            _ => {}
        }
        Ok(())
    });
    finish(tables, r)
}

/// A standalone XML attachment: C-CDA/CDA, FHIR XML or any other XML. Text is emitted
/// as `element: text` lines (and `element attribute: value` for value-carrying
/// attributes) so element names give the scanner context; clinical documents also
/// yield structure-aware fields.
pub(super) fn extract_document(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin) -> Res {
    let mut lines = String::new();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut fields: Vec<(String, &'static str, String)> = Vec::new();
    let mut dialect = Dialect::Unknown;
    let mut name_parts: Vec<String> = Vec::new();
    let mut ident: (Option<String>, Option<String>) = (None, None);
    let mut resource = String::new();
    let r = walk(ctx, b, |ev| {
        match ev {
            Ev::Start(e) => {
                let local = e.local_name().as_ref().to_vec();
                if stack.is_empty() {
                    dialect = if local == b"ClinicalDocument" {
                        Dialect::Cda
                    } else if attr(e, b"xmlns").is_some_and(|ns| ns.contains("hl7.org/fhir")) {
                        Dialect::Fhir
                    } else {
                        Dialect::Unknown
                    };
                }
                for a in [&b"value"[..], b"extension", b"displayName"] {
                    if let Some(v) = attr(e, a) {
                        lines.push_str(&format!(
                            "{} {}: {v}\n",
                            String::from_utf8_lossy(&local),
                            String::from_utf8_lossy(a)
                        ));
                    }
                }
                let parent = stack.last().map(Vec::as_slice);
                match dialect {
                    Dialect::Cda => cda_start(e, &local, parent, &stack, &mut fields),
                    Dialect::Fhir => {
                        if stack.is_empty() || parent == Some(b"resource") {
                            // Top-level resource, or one inside a Bundle entry.
                            resource = String::from_utf8_lossy(&local).into_owned();
                        }
                        let v = attr(e, b"value");
                        let within = |n: &[u8]| stack.iter().any(|s| s == n);
                        if within(b"identifier") {
                            match local.as_slice() {
                                b"system" => ident.0 = v,
                                b"value" => ident.1 = v,
                                _ => {}
                            }
                        } else if local == b"birthDate" && resource == "Patient" {
                            if let Some(v) = v {
                                fields.push(("fhir:Patient.birthDate".into(), "dob", v));
                            }
                        } else if within(b"name")
                            && resource == "Patient"
                            && matches!(local.as_slice(), b"family" | b"given")
                        {
                            if let Some(v) = v {
                                name_parts.push(v);
                            }
                        }
                    }
                    Dialect::Unknown => {}
                }
                stack.push(local);
            }
            Ev::Text(t) => {
                let t = t.trim();
                if !t.is_empty() {
                    let el = stack
                        .last()
                        .map(|s| String::from_utf8_lossy(s))
                        .unwrap_or_default();
                    lines.push_str(&format!("{el}: {t}\n"));
                    if dialect == Dialect::Cda
                        && in_patient_name(&stack)
                        && matches!(stack.last().map(Vec::as_slice), Some(b"given" | b"family"))
                    {
                        name_parts.push(t.to_string());
                    }
                }
            }
            Ev::End(n) => {
                stack.pop();
                let name_done = match dialect {
                    Dialect::Cda => {
                        n == b"name" && stack.last().map(Vec::as_slice) == Some(b"patient")
                    }
                    Dialect::Fhir => n == b"name" && resource == "Patient",
                    Dialect::Unknown => false,
                };
                if name_done && !name_parts.is_empty() {
                    let section = match dialect {
                        Dialect::Cda => "cda:patient/name",
                        _ => "fhir:Patient.name",
                    };
                    fields.push((
                        section.into(),
                        crate::dlp::names::PATIENT_NAME,
                        name_parts.join(" "),
                    ));
                    name_parts.clear();
                }
                if dialect == Dialect::Fhir && n == b"identifier" {
                    if let (system, Some(value)) = std::mem::take(&mut ident) {
                        let ssn = system.as_deref().is_some_and(|s| s.ends_with("us-ssn"));
                        if ssn {
                            fields.push((format!("fhir:{resource}.identifier"), "ssn", value));
                        } else if resource == "Patient" {
                            fields.push(("fhir:Patient.identifier".into(), "mrn", value));
                        }
                    }
                }
            }
        }
        Ok(())
    });
    for (section, detector, value) in fields {
        ctx.field(origin.with_section(section), detector, &value);
    }
    let label = match dialect {
        Dialect::Cda => "cda",
        Dialect::Fhir => "fhir",
        Dialect::Unknown => "xml",
    };
    ctx.text(origin.with_section(label), lines)?;
    r
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Unknown,
    Cda,
    Fhir,
}

/// The SSN OID of the US Social Security Administration, as used in CDA ids.
const SSN_OID: &str = "2.16.840.1.113883.4.1";

fn in_patient_name(stack: &[Vec<u8>]) -> bool {
    stack.len() >= 2 && stack[stack.len() - 2] == b"name" && stack.iter().any(|s| s == b"patient")
}

fn cda_start(
    e: &BytesStart<'_>,
    local: &[u8],
    parent: Option<&[u8]>,
    stack: &[Vec<u8>],
    fields: &mut Vec<(String, &'static str, String)>,
) {
    if local == b"id" && parent == Some(b"patientRole") {
        if let Some(ext) = attr(e, b"extension") {
            let detector = if attr(e, b"root").as_deref() == Some(SSN_OID) {
                "ssn"
            } else {
                "mrn"
            };
            fields.push(("cda:patientRole/id".into(), detector, ext));
        }
    } else if local == b"birthTime" && stack.iter().any(|s| s == b"patient") {
        if let Some(v) = attr(e, b"value") {
            fields.push(("cda:patient/birthTime".into(), "dob", v));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns() {
        assert_eq!(super::column("A1"), 0);
        assert_eq!(super::column("Z9"), 25);
        assert_eq!(super::column("AA10"), 26);
    }
}
