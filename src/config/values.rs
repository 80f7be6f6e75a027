//! Value types of the configuration file: durations, sizes and networks, each parsed
//! from a number or a string with a unit, with errors that say what was expected.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A duration written as `90`, `"90s"`, `"5m"`, `"2h"` or `"5d"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

impl Seconds {
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl std::str::FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 30s, 5m, 2h or 5d"))?;
        let mult = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "y" => 365 * 86400,
            _ => return Err(format!("`{s}`: unit must be s, m, h, d or y")),
        };
        Ok(Seconds(n.saturating_mul(mult)))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumOrStr::<Seconds>::new(
            "a duration like 30s, 5m, 2h or 5d",
        ))
    }
}

/// A size written as bytes (`1048576`) or with a suffix (`"512K"`, `"25M"`, `"1G"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 1048576, 512K or 25M"))?;
        let mult = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1024,
            "M" | "MB" | "MIB" => 1024 * 1024,
            "G" | "GB" | "GIB" => 1024 * 1024 * 1024,
            _ => return Err(format!("`{s}`: unit must be K, M or G")),
        };
        Ok(ByteSize(n.saturating_mul(mult)))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumOrStr::<ByteSize>::new(
            "a size like 1048576, 512K or 25M",
        ))
    }
}

/// Serde visitor for values that may be written as a bare integer or a string with a unit.
struct NumOrStr<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> NumOrStr<T> {
    fn new(expecting: &'static str) -> Self {
        NumOrStr {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: std::str::FromStr<Err = String>> de::Visitor<'_> for NumOrStr<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom("must not be negative"));
        }
        v.to_string().parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address means a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(ip)));
        }
        Err(de::Error::custom(format!(
            "`{s}` is not a network in CIDR notation such as 10.0.0.0/8 or ::1/128"
        )))
    }
}
