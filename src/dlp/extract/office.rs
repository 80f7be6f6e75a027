//! Office Open XML (DOCX, XLSX, PPTX) and OpenDocument (ODT, ODS, ODP): ZIP
//! containers of XML parts. Document text, headers and footers, comments, notes,
//! shared strings and cells; spreadsheets keep their column headers as context.

use super::zip::{open, read_entry, Archive};
use super::{table, xml, Ctx, Format, Origin, Res, Stop};

/// What a ZIP really is, from its entry names.
pub(super) fn detect(b: &[u8]) -> Format {
    let Ok(ar) = open(b) else {
        return Format::Zip;
    };
    let names: Vec<&str> = ar.file_names().take(10_000).collect();
    let has = |n: &str| names.contains(&n);
    if has("word/document.xml") {
        Format::Docx
    } else if has("xl/workbook.xml") {
        Format::Xlsx
    } else if has("ppt/presentation.xml") {
        Format::Pptx
    } else if has("content.xml") && (has("mimetype") || has("META-INF/manifest.xml")) {
        Format::Odf
    } else {
        Format::Zip
    }
}

/// Entry names matching `prefix` + number + `.xml`, in numeric order.
fn numbered(ar: &Archive<'_>, prefix: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = ar
        .file_names()
        .filter_map(|n| {
            let num = n.strip_prefix(prefix)?.strip_suffix(".xml")?;
            Some((num.parse().ok()?, n.to_string()))
        })
        .collect();
    v.sort();
    v
}

fn entry(ctx: &mut Ctx<'_>, ar: &mut Archive<'_>, name: &str) -> Result<Option<Vec<u8>>, Stop> {
    let Some(i) = ar.index_for_name(name) else {
        return Ok(None);
    };
    Ok(read_entry(ctx, ar, i)?.map(|(_, b)| b))
}

pub(super) fn extract(ctx: &mut Ctx<'_>, format: Format, b: &[u8], origin: &Origin) -> Res {
    let mut ar = open(b)?;
    if ar.len() > ctx.limits.max_entries as usize {
        return Err(Stop::Limit("archive has more than max_entries entries"));
    }
    if ar
        .file_names()
        .any(|n| n == "EncryptionInfo" || n == "EncryptedPackage")
    {
        return Err(Stop::Encrypted);
    }
    match format {
        Format::Docx => docx(ctx, &mut ar, origin),
        Format::Xlsx => xlsx(ctx, &mut ar, origin),
        Format::Pptx => pptx(ctx, &mut ar, origin),
        _ => odf(ctx, &mut ar, origin),
    }
}

fn text_part(ctx: &mut Ctx<'_>, ar: &mut Archive<'_>, name: &str, origin: Origin) -> Res {
    if let Some(x) = entry(ctx, ar, name)? {
        let t = xml::plain_text(ctx, &x)?;
        ctx.text(origin, t)?;
    }
    Ok(())
}

fn docx(ctx: &mut Ctx<'_>, ar: &mut Archive<'_>, origin: &Origin) -> Res {
    text_part(
        ctx,
        ar,
        "word/document.xml",
        origin.with_section("document"),
    )?;
    for (kind, section) in [("word/header", "header"), ("word/footer", "footer")] {
        for (n, name) in numbered(ar, kind) {
            text_part(
                ctx,
                ar,
                &name,
                origin.with_section(format!("{section} {n}")),
            )?;
        }
    }
    for (name, section) in [
        ("word/comments.xml", "comments"),
        ("word/footnotes.xml", "footnotes"),
        ("word/endnotes.xml", "endnotes"),
    ] {
        text_part(ctx, ar, name, origin.with_section(section))?;
    }
    Ok(())
}

fn pptx(ctx: &mut Ctx<'_>, ar: &mut Archive<'_>, origin: &Origin) -> Res {
    for (n, name) in numbered(ar, "ppt/slides/slide") {
        text_part(ctx, ar, &name, origin.with_section(format!("slide {n}")))?;
    }
    for (n, name) in numbered(ar, "ppt/notesSlides/notesSlide") {
        text_part(ctx, ar, &name, origin.with_section(format!("notes {n}")))?;
    }
    for (n, name) in numbered(ar, "ppt/comments/comment") {
        text_part(ctx, ar, &name, origin.with_section(format!("comments {n}")))?;
    }
    Ok(())
}

fn xlsx(ctx: &mut Ctx<'_>, ar: &mut Archive<'_>, origin: &Origin) -> Res {
    let shared = match entry(ctx, ar, "xl/sharedStrings.xml")? {
        Some(x) => xml::shared_strings(ctx, &x)?,
        None => Vec::new(),
    };
    for (n, name) in numbered(ar, "xl/worksheets/sheet") {
        if let Some(x) = entry(ctx, ar, &name)? {
            let rows = xml::xlsx_rows(ctx, &x, &shared)?;
            ctx.text(
                origin.with_section(format!("sheet {n}")),
                table::render(&rows),
            )?;
        }
    }
    for (n, name) in numbered(ar, "xl/comments") {
        text_part(ctx, ar, &name, origin.with_section(format!("comments {n}")))?;
    }
    Ok(())
}

fn odf(ctx: &mut Ctx<'_>, ar: &mut Archive<'_>, origin: &Origin) -> Res {
    let mimetype = entry(ctx, ar, "mimetype")?.unwrap_or_default();
    let Some(x) = entry(ctx, ar, "content.xml")? else {
        return Err(Stop::Malformed("OpenDocument without content.xml"));
    };
    if super::memfind(&mimetype, b"spreadsheet").is_some() {
        for (n, rows) in xml::ods_tables(ctx, &x)?.into_iter().enumerate() {
            ctx.text(
                origin.with_section(format!("sheet {}", n + 1)),
                table::render(&rows),
            )?;
        }
    } else {
        let t = xml::plain_text(ctx, &x)?;
        ctx.text(origin.with_section("document"), t)?;
    }
    Ok(())
}
