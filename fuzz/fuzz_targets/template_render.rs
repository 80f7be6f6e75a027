//! Caller-supplied `template_values` (any JSON) rendered into admin templates that loop,
//! filter and escape: an answer or a refusal, bounded by fuel and the size limit, never
//! a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::templates::Templates;
use std::sync::OnceLock;

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Templates::empty();
        let parts = [
            ("t", "subject", "Results for {{ name }}"),
            ("t", "txt", "{% for k, v in items|dictsort %}{{ k }}={{ v }}\n{% endfor %}{{ name|upper }}"),
            ("t", "html", "<ul>{% for x in list %}<li>{{ x }}</li>{% endfor %}</ul>{{ name|default('') }}"),
        ];
        for (n, e, s) in parts {
            t.add(n, e, s.to_string()).expect("fixed template compiles");
        }
        t
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(values)) = serde_json::from_slice(data) else {
        return;
    };
    let _ = templates().render("t", &values, 64 * 1024);
});
