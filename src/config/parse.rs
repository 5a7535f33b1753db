//! The value parsers of the settings: durations, networks, the trusted proxies, the bcrypt
//! priority.

use std::time::Duration;

use crate::domain::settings::BCRYPT_SCHED_IDLE;

/// `idle`, or a nice value 0-19.
pub(super) fn parse_bcrypt_priority(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("idle") {
        return Ok(BCRYPT_SCHED_IDLE);
    }
    match s.parse::<u8>() {
        Ok(n) if n <= 19 => Ok(n),
        _ => Err(format!("{s:?} is neither `idle` nor a nice value 0-19")),
    }
}

/// `AUTHD_TRUSTED_PROXIES`: IPs and CIDR networks. Empty items, and an empty value, mean none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl std::ops::Deref for TrustedProxies {
    type Target = [ipnet::IpNet];
    fn deref(&self) -> &[ipnet::IpNet] {
        &self.0
    }
}

impl From<Vec<ipnet::IpNet>> for TrustedProxies {
    fn from(v: Vec<ipnet::IpNet>) -> Self {
        Self(v)
    }
}

/// Parses a comma-separated list of IPs and CIDR networks, ignoring empty items.
pub fn parse_trusted_proxies(s: &str) -> Result<TrustedProxies, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_net)
        .collect::<Result<Vec<_>, _>>()
        .map(TrustedProxies)
}

/// Parses an IP address or a CIDR network.
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

/// Parses `500ms`, `90s`, `15m`, `12h`, `7d`, or a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("missing unit in duration {s:?} (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid number in duration {s:?}"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => Err(format!(
            "unknown unit {unit:?} in duration {s:?} (use ms, s, m, h or d)"
        )),
    }
}

/// `AUTHD_LINK_BASE_URL`: an absolute `http://` or `https://` URL, stored without a trailing `/`.
pub fn parse_link_base_url(s: &str) -> Result<String, String> {
    let trimmed = s.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(['?', '#', ' ']) {
        return Err(format!(
            "`{s}` must be a base URL with a host and no query or fragment"
        ));
    }
    Ok(trimmed.to_string())
}

/// `AUTHD_TOTP_ISSUER`: 1-64 printable ASCII characters without a colon (the label separator), so
/// that the enrolment URI stays short enough for its QR code.
pub(super) fn parse_totp_issuer(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 || s.bytes().any(|b| !(0x20..0x7f).contains(&b) || b == b':') {
        return Err("1-64 printable ASCII characters without ':'".into());
    }
    Ok(s.to_owned())
}
