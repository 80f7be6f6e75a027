//! From a recipient domain to an ordered list of next-hop hosts (RFC 5321 §5.1, RFC 7505).

use rand::seq::SliceRandom;
use rand::Rng;
use thiserror::Error;

use crate::dns::{DnsError, DnssecStatus, Mx, Resolver};

/// One next hop. `name` is the MX exchange (the TLS reference name and TLSA base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub name: String,
    pub port: u16,
    /// True when the name came from a DNSSEC-secure MX answer (or is the domain itself for
    /// an implicit MX, or a configured route): a precondition for DANE (RFC 7672 §2.2.1).
    pub name_secure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub hops: Vec<NextHop>,
    pub mx_status: DnssecStatus,
    /// True for the implicit MX (no MX records: the domain's own address).
    pub implicit: bool,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("domain publishes a null MX (RFC 7505): it accepts no mail")]
    NullMx,
    #[error("{0}")]
    Dns(#[from] DnsError),
    #[error("no MX or address records for the domain")]
    NoHosts,
}

/// Sorts by preference, shuffling hosts of equal preference (RFC 5321 §5.1). A null MX
/// (a lone `.` exchange) is reported as an error; `.` mixed with real hosts is ignored.
pub fn order_mx<R: Rng>(records: &[Mx], rng: &mut R) -> Result<Vec<Mx>, RouteError> {
    let real: Vec<Mx> = records
        .iter()
        .filter(|m| !m.exchange.is_empty())
        .cloned()
        .collect();
    if real.is_empty() && !records.is_empty() {
        return Err(RouteError::NullMx);
    }
    let mut by_pref = real;
    by_pref.shuffle(rng);
    // A stable sort keeps the shuffled order inside each preference.
    by_pref.sort_by_key(|m| m.preference);
    Ok(by_pref)
}

/// Looks up the MX route for `domain`.
pub async fn resolve(
    resolver: &dyn Resolver,
    domain: &str,
    port: u16,
) -> Result<Route, RouteError> {
    let answer = resolver.mx(domain).await?;
    if answer.records.is_empty() {
        // Implicit MX: the domain itself, if it has addresses.
        let ips = resolver.ip(domain).await?;
        if ips.records.is_empty() {
            return Err(RouteError::NoHosts);
        }
        return Ok(Route {
            hops: vec![NextHop {
                name: domain.to_ascii_lowercase(),
                port,
                name_secure: true,
            }],
            mx_status: answer.status,
            implicit: true,
        });
    }
    let ordered = order_mx(&answer.records, &mut rand::thread_rng())?;
    let secure = answer.status == DnssecStatus::Secure;
    Ok(Route {
        hops: ordered
            .into_iter()
            .map(|m| NextHop {
                name: m.exchange,
                port,
                name_secure: secure,
            })
            .collect(),
        mx_status: answer.status,
        implicit: false,
    })
}

/// Parses an override route `host:port` (or `[v6]:port`); `host` alone uses `default_port`.
pub fn parse_route(route: &str, default_port: u16) -> Option<NextHop> {
    let (host, port) = if let Some(rest) = route.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        (h, p.strip_prefix(':').map(str::parse).transpose().ok()?)
    } else {
        match route.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (route, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(NextHop {
        name: host.trim_end_matches('.').to_ascii_lowercase(),
        port: port.unwrap_or(default_port),
        name_secure: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::StaticResolver;
    use rand::SeedableRng;
    use std::net::IpAddr;

    fn mx(p: u16, e: &str) -> Mx {
        Mx {
            preference: p,
            exchange: e.into(),
        }
    }

    #[test]
    fn preference_order_and_shuffle_among_equals() {
        let recs = vec![
            mx(20, "c"),
            mx(10, "a1"),
            mx(10, "a2"),
            mx(10, "a3"),
            mx(5, "z"),
        ];
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let o = order_mx(&recs, &mut rng).expect("ordered");
            assert_eq!(o[0].exchange, "z");
            assert_eq!(o[4].exchange, "c");
            assert!(o[1..4].iter().all(|m| m.preference == 10));
            firsts.insert(o[1].exchange.clone());
        }
        assert_eq!(firsts.len(), 3, "equal preferences must be shuffled");
    }

    #[test]
    fn null_mx() {
        let mut rng = rand::thread_rng();
        assert_eq!(order_mx(&[mx(0, "")], &mut rng), Err(RouteError::NullMx));
        let mixed = order_mx(&[mx(0, ""), mx(10, "a")], &mut rng).expect("mixed");
        assert_eq!(mixed, vec![mx(10, "a")]);
    }

    #[tokio::test]
    async fn implicit_mx_and_null_via_resolver() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let r = StaticResolver::new()
            .with_ip("noMX.example", DnssecStatus::Insecure, &[ip])
            .with_mx("null.example", DnssecStatus::Secure, &[(0, ".")]);
        let route = resolve(&r, "nomx.example", 2525).await.expect("implicit");
        assert!(route.implicit);
        assert_eq!(route.hops[0].name, "nomx.example");
        assert_eq!(route.hops[0].port, 2525);
        assert_eq!(
            resolve(&r, "null.example", 25).await,
            Err(RouteError::NullMx)
        );
        assert_eq!(
            resolve(&r, "nothing.example", 25).await,
            Err(RouteError::NoHosts)
        );
    }

    #[test]
    fn override_routes() {
        assert_eq!(
            parse_route("relay.example:2525", 25).map(|h| (h.name, h.port)),
            Some(("relay.example".into(), 2525))
        );
        assert_eq!(parse_route("relay.example", 25).map(|h| h.port), Some(25));
        assert_eq!(
            parse_route("[::1]:26", 25).map(|h| (h.name, h.port)),
            Some(("::1".into(), 26))
        );
        assert_eq!(parse_route("x:notaport", 25), None);
    }
}
