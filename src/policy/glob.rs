//! Case-insensitive `*` / `?` globs for addresses, domains, identities and file names.

/// True if `text` matches `pattern` (ASCII case-insensitive; `*` any run, `?` one char).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let t: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The domain part of an address (after the last `@`), lowercased.
pub fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map_or("", |(_, d)| d)
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// An address pattern: with `@` it is matched against the whole address, without
/// it against the domain only (`example.org`, `*.example.org`).
pub fn address_matches(pattern: &str, addr: &str) -> bool {
    if pattern.contains('@') {
        glob(pattern, addr)
    } else {
        glob(pattern, &domain_of(addr))
    }
}

/// A domain list entry matches the domain itself; `*.x` matches subdomains of x.
pub fn domain_in(list: &[String], domain: &str) -> bool {
    list.iter().any(|p| glob(p, domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*@Clinic.example", "dr.who@clinic.EXAMPLE"));
        assert!(glob("*.pdf", "x.PDF"));
        assert!(glob("image/*", "image/png"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(!glob("*.example.org", "example.org"));
        assert!(glob("*", ""));
        assert!(!glob("x", ""));
    }

    #[test]
    fn addresses() {
        assert!(address_matches("partner.example", "a@partner.example"));
        assert!(!address_matches("partner.example", "a@evilpartner.example"));
        assert!(address_matches("*.partner.example", "a@mx.partner.example"));
        assert!(address_matches("billing@*", "billing@x.example"));
        assert_eq!(domain_of("no-at-sign"), "");
    }
}
