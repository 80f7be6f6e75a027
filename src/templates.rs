//! Admin-managed message templates (L1): `[api] templates_dir` holds `NAME.subject`,
//! `NAME.txt` and `NAME.html` (any of them; at least one). MiniJinja renders them with
//! HTML auto-escaping for `.html` only, strict undefined values (a missing value is an
//! error, not an empty string) and a fuel limit, so a caller's values cannot make a
//! render run away. DLP scans the rendered message like any other.

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest template file (they are admin-written text).
const MAX_FILE: u64 = 1024 * 1024;
/// Instructions one render may run (loops over huge values end here).
const FUEL: u64 = 2_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: {reason}", file.display())]
    Load { file: PathBuf, reason: String },
    #[error("no template named `{0}`")]
    Unknown(String),
    /// `reason` is MiniJinja's error kind and line: never a value.
    #[error("template `{name}` ({part}) failed: {reason}")]
    Render {
        name: String,
        part: &'static str,
        reason: String,
    },
    #[error("template `{name}` renders more than {max} bytes")]
    TooLarge { name: String, max: usize },
}

/// Which parts a template has.
#[derive(Debug, Default, Clone, Copy)]
struct Parts {
    subject: bool,
    text: bool,
    html: bool,
}

/// A rendered template: the parts it defines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

pub struct Templates {
    env: Environment<'static>,
    parts: BTreeMap<String, Parts>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.parts.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Template names are what a request may name: no paths.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !n.starts_with('.')
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(50);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env
}

impl Templates {
    /// No templates (no `templates_dir`).
    pub fn empty() -> Templates {
        Templates {
            env: environment(),
            parts: BTreeMap::new(),
        }
    }

    /// Read and compile every template in `dir`; the first bad file is the error.
    /// Files with other extensions (a README, editor backups) are ignored.
    pub fn load(dir: &Path) -> Result<Templates, TemplateError> {
        let load_err = |file: &Path, reason: String| TemplateError::Load {
            file: file.to_path_buf(),
            reason,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| load_err(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        let mut t = Templates::empty();
        for file in files {
            let (Some(stem), Some(ext)) = (
                file.file_stem().and_then(|s| s.to_str()),
                file.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if !matches!(ext, "subject" | "txt" | "html") {
                continue;
            }
            let meta = std::fs::metadata(&file).map_err(|e| load_err(&file, e.to_string()))?;
            if meta.len() > MAX_FILE {
                return Err(load_err(&file, format!("larger than {MAX_FILE} bytes")));
            }
            let source =
                std::fs::read_to_string(&file).map_err(|e| load_err(&file, e.to_string()))?;
            let source = if ext == "subject" {
                source.trim_end_matches(['\r', '\n']).to_string()
            } else {
                source
            };
            t.add(stem, ext, source)
                .map_err(|reason| load_err(&file, reason))?;
        }
        Ok(t)
    }

    /// Compile one part (`ext`: `subject`, `txt` or `html`) of template `name`.
    pub fn add(&mut self, name: &str, ext: &str, source: String) -> Result<(), String> {
        if !valid_name(name) {
            return Err("template names use letters, digits, '.', '_' and '-'".into());
        }
        let slot = match ext {
            "subject" | "txt" | "html" => ext,
            _ => return Err(format!("unknown template part `{ext}`")),
        };
        self.env
            .add_template_owned(format!("{name}.{slot}"), source)
            .map_err(|e| describe(&e))?;
        let p = self.parts.entry(name.to_string()).or_default();
        match slot {
            "subject" => p.subject = true,
            "txt" => p.text = true,
            _ => p.html = true,
        }
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.keys().map(String::as_str)
    }

    /// Render template `name` with `values`; the parts together at most `max` bytes.
    pub fn render(
        &self,
        name: &str,
        values: &serde_json::Map<String, serde_json::Value>,
        max: usize,
    ) -> Result<Rendered, TemplateError> {
        let parts = self
            .parts
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_string()))?;
        let ctx = Value::from_serialize(values);
        let mut total = 0usize;
        let mut one = |on: bool, ext: &str, part: &'static str| -> Result<_, TemplateError> {
            if !on {
                return Ok(None);
            }
            let out = self
                .env
                .get_template(&format!("{name}.{ext}"))
                .and_then(|t| t.render(&ctx))
                .map_err(|e| TemplateError::Render {
                    name: name.to_string(),
                    part,
                    reason: describe(&e),
                })?;
            total += out.len();
            if total > max {
                return Err(TemplateError::TooLarge {
                    name: name.to_string(),
                    max,
                });
            }
            Ok(Some(out))
        };
        Ok(Rendered {
            subject: one(parts.subject, "subject", "subject")?,
            text: one(parts.text, "txt", "text")?,
            html: one(parts.html, "html", "html")?,
        })
    }
}

/// An error's kind and line only: MiniJinja's full message can quote the template source
/// around the failure, and a caller's values may be rendered into it.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(l) => format!("{} (line {l})", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (n, s) in files {
            std::fs::write(d.path().join(n), s).expect("write");
        }
        d
    }

    fn values(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_with_html_escaping_only_in_html() {
        let d = dir(&[
            ("result.subject", "Results for {{ first }}\n"),
            ("result.txt", "Dear {{ first }}, {{ note }}"),
            ("result.html", "<p>Dear {{ first }}, {{ note }}</p>"),
            ("README", "ignored"),
        ]);
        let t = Templates::load(d.path()).expect("load");
        assert_eq!(t.names().collect::<Vec<_>>(), ["result"]);
        let r = t
            .render(
                "result",
                &values(serde_json::json!({"first": "Ann", "note": "<b>x</b> & y"})),
                10_000,
            )
            .expect("render");
        assert_eq!(r.subject.as_deref(), Some("Results for Ann"));
        assert_eq!(r.text.as_deref(), Some("Dear Ann, <b>x</b> & y"));
        assert_eq!(
            r.html.as_deref(),
            Some("<p>Dear Ann, &lt;b&gt;x&lt;&#x2f;b&gt; &amp; y</p>")
        );
    }

    #[test]
    fn missing_values_unknown_names_and_limits_are_errors_without_values() {
        let d = dir(&[
            ("a.txt", "{{ x }} {{ y }}"),
            (
                "loop.txt",
                "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
            ),
        ]);
        let t = Templates::load(d.path()).expect("load");
        let e = t
            .render("a", &values(serde_json::json!({"x": "SECRET"})), 1000)
            .unwrap_err();
        assert!(matches!(e, TemplateError::Render { .. }), "{e:?}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        assert!(matches!(
            t.render("nope", &Default::default(), 10),
            Err(TemplateError::Unknown(_))
        ));
        let big = values(serde_json::json!({"x": "a".repeat(100), "y": "b"}));
        assert!(matches!(
            t.render("a", &big, 50),
            Err(TemplateError::TooLarge { .. })
        ));
        // Fuel ends a runaway loop long before it finishes.
        assert!(matches!(
            t.render("loop", &Default::default(), usize::MAX),
            Err(TemplateError::Render { .. })
        ));
    }

    #[test]
    fn a_broken_template_names_its_file() {
        let d = dir(&[("bad.html", "{% if %}")]);
        let e = Templates::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("bad.html"), "{e}");
    }
}
