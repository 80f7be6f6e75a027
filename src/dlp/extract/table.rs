//! Tables (CSV, TSV, spreadsheet sheets) rendered for the scanner with their column
//! headers: a row becomes `SSN: 536228901 | DOB: 01/02/1970`, so a column named SSN or
//! DOB is context for every value under it.

use super::xml::Rows;
use super::{Ctx, Origin, Res};

/// Whether a first row reads as headers: some cell has letters and none is a long number.
fn is_header(row: &[(usize, String)]) -> bool {
    row.iter().any(|(_, c)| c.chars().any(char::is_alphabetic))
        && !row
            .iter()
            .any(|(_, c)| c.chars().filter(char::is_ascii_digit).count() >= 7)
}

pub(super) fn render(rows: &Rows) -> String {
    let mut out = String::new();
    let mut iter = rows.iter().filter(|r| !r.is_empty());
    let Some(first) = iter.next() else {
        return out;
    };
    let headers: Vec<(usize, String)> = if is_header(first) {
        first.clone()
    } else {
        Vec::new()
    };
    let header = |col: usize| {
        headers
            .iter()
            .find(|(c, _)| *c == col)
            .map(|(_, h)| h.trim())
            .filter(|h| !h.is_empty())
    };
    let rest: Box<dyn Iterator<Item = &Vec<(usize, String)>>> = if headers.is_empty() {
        Box::new(std::iter::once(first).chain(iter))
    } else {
        Box::new(iter)
    };
    for row in rest {
        for (i, (col, v)) in row.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            if let Some(h) = header(*col) {
                out.push_str(h);
                out.push_str(": ");
            }
            out.push_str(v);
        }
        out.push('\n');
    }
    out
}

/// RFC 4180-style fields: quotes, doubled quotes, separators and newlines inside quotes.
pub(super) fn parse(text: &str, sep: u8) -> Rows {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let sep = char::from(sep);
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && field.is_empty() {
            quoted = true;
        } else if c == sep {
            let col = row.len();
            row.push((col, std::mem::take(&mut field)));
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            let col = row.len();
            row.push((col, std::mem::take(&mut field)));
            rows.push(std::mem::take(&mut row));
        } else {
            field.push(c);
        }
    }
    if !field.is_empty() || !row.is_empty() {
        let col = row.len();
        row.push((col, field));
        rows.push(row);
    }
    for r in &mut rows {
        r.retain(|(_, v)| !v.trim().is_empty());
    }
    rows
}

pub(super) fn extract(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin, sep: u8) -> Res {
    let text = String::from_utf8_lossy(b);
    ctx.tick()?;
    let rows = parse(&text, sep);
    ctx.text(origin.clone(), render(&rows))
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_become_context() {
        let rows = super::parse("name,SSN\n\"Doe, J\",536228901\n", b',');
        assert_eq!(super::render(&rows), "name: Doe, J | SSN: 536228901\n");
    }
}
