//! `[tlsrpt]`: RFC 8460 SMTP TLS reporting to recipient domains that ask for it.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRptConfig {
    /// Default: on when `delivery.mode = "mx"` (the only mode that talks to the
    /// recipient domains' MX hosts).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `organization-name` in reports; default `server.hostname`.
    #[serde(default)]
    pub organization_name: Option<String>,
    /// `contact-info` in reports; default the `from` address.
    #[serde(default)]
    pub contact_info: Option<String>,
    /// From address of mailed reports; default `noreply-smtp-tls-reporting@<hostname>`.
    /// A `[[dkim]]` key covering its domain signs them.
    #[serde(default)]
    pub from: Option<String>,
    /// UTC hour (0-23) after which the previous days' reports are sent.
    #[serde(default = "default_send_hour")]
    pub send_hour: u8,
}

fn default_send_hour() -> u8 {
    1
}

/// `[tlsrpt]` with every default filled in from the rest of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptSettings {
    pub organization_name: String,
    pub contact_info: String,
    pub from: String,
    pub send_hour: u8,
}

impl TlsRptConfig {
    pub fn is_enabled(&self, mode: super::DeliveryMode) -> bool {
        self.enabled.unwrap_or(mode == super::DeliveryMode::Mx)
    }

    pub fn settings(&self, hostname: &str) -> TlsRptSettings {
        let from = self
            .from
            .clone()
            .unwrap_or_else(|| format!("noreply-smtp-tls-reporting@{hostname}"));
        TlsRptSettings {
            organization_name: self
                .organization_name
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            contact_info: self.contact_info.clone().unwrap_or_else(|| from.clone()),
            from,
            send_hour: self.send_hour,
        }
    }

    /// Structural checks: (key, message) of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.send_hour > 23 {
            return Err(("tlsrpt.send_hour", "must be an hour from 0 to 23 (UTC)"));
        }
        if let Some(from) = &self.from {
            let ok = from.rsplit_once('@').is_some_and(|(l, d)| {
                !l.is_empty()
                    && d.contains('.')
                    && from
                        .chars()
                        .all(|c| c.is_ascii_graphic() && !"<>\"(),;:\\[]".contains(c))
            });
            if !ok {
                return Err((
                    "tlsrpt.from",
                    "must be a plain address like tlsrpt@example.org",
                ));
            }
        }
        let one_line = |s: &Option<String>| {
            s.as_deref()
                .is_none_or(|v| !v.trim().is_empty() && !v.chars().any(char::is_control))
        };
        if !one_line(&self.organization_name) {
            return Err(("tlsrpt.organization_name", "must be one non-empty line"));
        }
        if !one_line(&self.contact_info) {
            return Err(("tlsrpt.contact_info", "must be one non-empty line"));
        }
        Ok(())
    }
}
