//! JSON attachments, FHIR resources in particular. Text is rendered as `path: value`
//! lines (keys are context); a FHIR Patient's identifiers, birth date and name, also
//! inside Bundles, are structure-aware fields (`fhir:Patient.identifier`).

use super::{Ctx, Origin, Res, Stop};
use crate::dlp::names;
use serde_json::Value;

pub(super) fn extract(ctx: &mut Ctx<'_>, b: &[u8], origin: &Origin) -> Res {
    // serde_json limits recursion to 128 levels; the input size is bounded upstream.
    let v: Value = serde_json::from_slice(b).map_err(|_| Stop::Malformed("malformed JSON"))?;
    let mut out = String::new();
    let mut count = 0u32;
    render(ctx, &v, "", &mut out, &mut count)?;
    patients(ctx, &v, origin, 0);
    let label = if v.get("resourceType").is_some() {
        "fhir"
    } else {
        "json"
    };
    ctx.text(origin.with_section(label), out)
}

fn render(ctx: &Ctx<'_>, v: &Value, key: &str, out: &mut String, count: &mut u32) -> Res {
    *count += 1;
    if *count % 4096 == 0 {
        ctx.tick()?;
    }
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                render(ctx, v, k, out, count)?;
            }
        }
        Value::Array(a) => {
            for v in a {
                render(ctx, v, key, out, count)?;
            }
        }
        Value::String(s) => out.push_str(&format!("{key}: {s}\n")),
        Value::Number(n) => out.push_str(&format!("{key}: {n}\n")),
        _ => {}
    }
    Ok(())
}

/// FHIR Patient resources anywhere in the document (Bundle.entry.resource, contained).
fn patients(ctx: &mut Ctx<'_>, v: &Value, origin: &Origin, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::Object(m) => {
            if m.get("resourceType").and_then(Value::as_str) == Some("Patient") {
                patient(ctx, v, origin);
            }
            for v in m.values() {
                patients(ctx, v, origin, depth + 1);
            }
        }
        Value::Array(a) => {
            for v in a {
                patients(ctx, v, origin, depth + 1);
            }
        }
        _ => {}
    }
}

fn patient(ctx: &mut Ctx<'_>, p: &Value, origin: &Origin) {
    for id in p
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let system = id.get("system").and_then(Value::as_str).unwrap_or_default();
        let ty = id.pointer("/type/coding/0/code").and_then(Value::as_str);
        if let Some(value) = id.get("value").and_then(Value::as_str) {
            let detector = if system.ends_with("us-ssn") || ty == Some("SS") {
                names::SSN
            } else {
                names::MRN
            };
            ctx.field(
                origin.with_section("fhir:Patient.identifier"),
                detector,
                value,
            );
        }
    }
    if let Some(d) = p.get("birthDate").and_then(Value::as_str) {
        ctx.field(origin.with_section("fhir:Patient.birthDate"), names::DOB, d);
    }
    for n in p
        .get("name")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut parts: Vec<&str> = n
            .get("given")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.extend(n.get("family").and_then(Value::as_str));
        if !parts.is_empty() {
            ctx.field(
                origin.with_section("fhir:Patient.name"),
                names::PATIENT_NAME,
                &parts.join(" "),
            );
        }
    }
}
