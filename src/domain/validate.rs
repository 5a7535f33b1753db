//! Input rules for account fields. Size limits are checked before any expensive work.
//!
//! | field | rule |
//! |---|---|
//! | email | ASCII, HTML5 "valid e-mail address" syntax, at most 254 characters; trimmed and lowercased |
//! | username | optional; 3-32 characters of `[A-Za-z0-9_.-]`; unique regardless of case |
//! | first_name, last_name | optional; at most 100 characters; no control characters |
//! | service key name | 1-100 characters; no control characters |

use uuid::Uuid;

use super::{Error, Result};

pub const MAX_EMAIL_CHARS: usize = 254;
pub const MIN_USERNAME_CHARS: usize = 3;
pub const MAX_USERNAME_CHARS: usize = 32;
pub const MAX_NAME_CHARS: usize = 100;
/// Hard cap on a login identifier (e-mail or username) before anything else is looked at.
pub const MAX_IDENTIFIER_BYTES: usize = 320;

/// Trims and lowercases an e-mail address, then checks it. Errors are INVALID_ARGUMENT.
pub fn email(raw: &str) -> Result<String> {
    let e = normalize_email(raw);
    if e.is_empty() {
        return Err(Error::invalid("email is required"));
    }
    if e.chars().count() > MAX_EMAIL_CHARS {
        return Err(Error::invalid(format!(
            "email must be at most {MAX_EMAIL_CHARS} characters"
        )));
    }
    if !is_valid_email(&e) {
        return Err(Error::invalid("email is not a valid address"));
    }
    Ok(e)
}

/// Trim and lowercase, as stored.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_ascii_lowercase()
}

/// The HTML5 definition of a valid e-mail address (ASCII only), with the length limits of RFC 5321.
pub fn is_valid_email(e: &str) -> bool {
    if !e.is_ascii() || e.len() > MAX_EMAIL_CHARS {
        return false;
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    const LOCAL_SPECIALS: &str = ".!#$%&'*+/=?^_`{|}~-";
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c));
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

/// An optional username: empty means none.
pub fn username(raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if !is_valid_username(raw) {
        return Err(Error::invalid(format!(
            "username must be {MIN_USERNAME_CHARS}-{MAX_USERNAME_CHARS} characters of letters, digits, '_', '.' or '-'"
        )));
    }
    Ok(Some(raw.to_owned()))
}

pub fn is_valid_username(u: &str) -> bool {
    (MIN_USERNAME_CHARS..=MAX_USERNAME_CHARS).contains(&u.len())
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A first or last name: at most 100 characters, no control characters. Surrounding space is trimmed.
pub fn person_name(field: &str, raw: &str) -> Result<String> {
    let n = raw.trim();
    if n.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if n.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(n.to_owned())
}

/// A label such as a service key's name: required, at most 100 characters, no control characters.
pub fn label(field: &str, raw: &str) -> Result<String> {
    let n = raw.trim();
    if n.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    person_name(field, n)
}

/// The most networks a list of CIDRs (a service key's `allowed_cidrs`) may hold.
pub const MAX_CIDRS: usize = 64;

/// A list of IPs or CIDR networks, normalized: `10.1.2.3/8` becomes `10.0.0.0/8`, a bare IP a /32
/// or /128, an IPv4-mapped IPv6 network its IPv4 form; duplicates are dropped.
pub fn cidrs(field: &str, input: &[String]) -> Result<Vec<String>> {
    if input.len() > MAX_CIDRS {
        return Err(Error::invalid(format!(
            "{field} may list at most {MAX_CIDRS} networks"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(input.len());
    for (i, raw) in input.iter().enumerate() {
        let s = raw.trim();
        let net = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                let shown: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
                Error::invalid(format!(
                    "{field}[{i}]: {shown:?} is not an IP address or CIDR network"
                ))
            })?;
        let net = match net {
            ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4)
                }
                _ => net,
            },
            ipnet::IpNet::V4(_) => net,
        }
        .trunc()
        .to_string();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// A required UUID field.
pub fn uuid(field: &str, raw: &str) -> Result<Uuid> {
    if raw.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if raw.len() > 64 {
        return Err(Error::invalid(format!("{field} is not a valid UUID")));
    }
    Uuid::parse_str(raw).map_err(|_| Error::invalid(format!("{field} is not a valid UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_normalized_idempotently() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let out = cidrs(
            "c",
            &v(&[
                "10.1.2.3/8",
                " 192.0.2.7",
                "2001:db8::1/32",
                "::ffff:10.9.0.0/112",
                "10.0.0.0/8",
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            v(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.9.0.0/16"])
        );
        assert_eq!(cidrs("c", &out).unwrap(), out);
        assert!(cidrs("c", &v(&["10.0.0.0/33"])).is_err());
        assert!(cidrs("c", &v(&["\u{0}nope"])).is_err());
        assert!(cidrs("c", &vec!["10.0.0.1".to_owned(); MAX_CIDRS + 1]).is_err());
        assert!(cidrs("c", &[]).unwrap().is_empty());
    }

    #[test]
    fn emails() {
        assert_eq!(
            email("  Alice@Example.COM ").ok(),
            Some("alice@example.com".into())
        );
        assert!(email("a.b+tag@sub.example.org").is_ok());
        assert!(email("user@localhost").is_ok());
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@exa mple.com",
            "a@-example.com",
            "a@example..com",
            "jürgen@example.com",
            "a@b@c.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(email(&long_local).is_err());
        let too_long = format!("{}@{}.com", "a".repeat(60), "b".repeat(200));
        assert!(email(&too_long).is_err());
    }

    #[test]
    fn usernames() {
        assert_eq!(username("").ok(), Some(None));
        assert!(username("Al_i.ce-9").is_ok());
        assert!(username("abc").is_ok());
        assert!(username(&"a".repeat(32)).is_ok());
        for bad in ["ab", "a b c", "émile", "x@y", &"a".repeat(33)] {
            assert!(username(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn names() {
        assert_eq!(person_name("first_name", " Ada ").ok(), Some("Ada".into()));
        assert!(person_name("first_name", &"é".repeat(100)).is_ok());
        assert!(person_name("first_name", &"é".repeat(101)).is_err());
        assert!(person_name("first_name", "a\u{0}b").is_err());
        assert!(person_name("first_name", "a\nb").is_err());
        assert!(label("name", " ").is_err());
    }

    #[test]
    fn uuids() {
        assert!(uuid("id", "").is_err());
        assert!(uuid("id", "nope").is_err());
        assert!(uuid("id", "6f1c5a52-5d1e-4d4e-9a55-3b1b2a9b8c10").is_ok());
    }
}
