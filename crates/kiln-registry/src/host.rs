//! Registry hosts: the name credentials are filed under, the host the API is
//! served at, and whether plain HTTP may be used to reach it.

use std::net::{IpAddr, Ipv4Addr};

use crate::Error;

/// The name Docker Hub images carry in references and credential files.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub serves the distribution API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Spellings of Docker Hub found in references and in Docker's config.json
/// (`https://index.docker.io/v1/` is what `docker login` writes).
const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A registry as a user or a reference names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RegistryHost {
    /// The name references use and credentials are filed under
    /// (`docker.io`, `localhost:5000`), lowercase.
    pub key: String,
    /// `host[:port]` the API is served at.
    pub api: String,
    /// A scheme the user wrote (`http://host`), which is then the only one tried.
    pub scheme: Option<Scheme>,
}

impl RegistryHost {
    /// Parses `host[:port]`, optionally with a scheme and a path as Docker
    /// writes them (`https://index.docker.io/v1/`).
    pub(crate) fn parse(input: &str) -> Result<RegistryHost, Error> {
        let bad = |why: &str| Error::InvalidHost {
            host: input.to_owned(),
            why: why.to_owned(),
        };
        let trimmed = input.trim();
        let lower = trimmed.to_ascii_lowercase();
        let (scheme, rest) = if let Some(rest) = lower.strip_prefix("https://") {
            (Some(Scheme::Https), rest)
        } else if let Some(rest) = lower.strip_prefix("http://") {
            (Some(Scheme::Http), rest)
        } else if lower.contains("://") {
            return Err(bad("only http:// and https:// registries exist"));
        } else {
            (None, lower.as_str())
        };
        // Docker's keys carry an API path (`/v1/`); only the host matters.
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad(
                "credentials do not belong in the host name; use `kiln registry login`",
            ));
        }
        validate_authority(authority).map_err(bad)?;
        let (key, api) = if DOCKER_HUB_ALIASES.contains(&authority) {
            (DOCKER_HUB.to_owned(), DOCKER_HUB_API.to_owned())
        } else {
            (authority.to_owned(), authority.to_owned())
        };
        Ok(RegistryHost { key, api, scheme })
    }

    /// The host a reference's domain names (`kiln_oci::Reference::domain`).
    pub(crate) fn for_domain(domain: &str) -> Result<RegistryHost, Error> {
        let host = RegistryHost::parse(domain)?;
        Ok(RegistryHost {
            scheme: None,
            ..host
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with a numeric port.
fn validate_authority(authority: &str) -> Result<(), &'static str> {
    if authority.is_empty() {
        return Err("it is empty");
    }
    let (host, port) = split_port(authority);
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("the port must be a number from 1 to 65535");
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        let addr = inner
            .strip_suffix(']')
            .ok_or("malformed IPv6 address (expected [address]:port)")?;
        return match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => Ok(()),
            _ => Err("malformed IPv6 address"),
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("a host name is letters, digits, '-' and '.', optionally with :port")
    }
}

/// Splits `host:port` (or `[v6]:port`) into host and port.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    }
}

/// Whether `authority` (`host[:port]`) is this machine: `localhost`,
/// 127.0.0.0/8 or `[::1]`, with any port.
pub(crate) fn is_loopback(authority: &str) -> bool {
    let (host, _) = split_port(authority);
    let host = host.to_ascii_lowercase();
    if host == "localhost" {
        return true;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether plain HTTP may be used for `authority`: loopback always; other
/// hosts only when `insecure` names them (`host` for any port, or
/// `host:port` exactly; a scheme or path in an entry is ignored).
pub(crate) fn plain_http_allowed(authority: &str, insecure: &[String]) -> bool {
    if is_loopback(authority) {
        return true;
    }
    let wanted = authority.to_ascii_lowercase();
    let canonical = RegistryHost::parse(&wanted).ok();
    let (wanted_host, _) = split_port(&wanted);
    insecure.iter().any(|entry| {
        let Ok(entry) = RegistryHost::parse(entry) else {
            return false;
        };
        let names: &[&str] = match &canonical {
            Some(c) => &[&wanted, &c.key, &c.api],
            None => &[&wanted],
        };
        let (entry_host, entry_port) = split_port(&entry.key);
        names.contains(&entry.key.as_str())
            || names.contains(&entry.api.as_str())
            || (entry_port.is_none() && entry_host == wanted_host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_in_every_spelling() {
        let h = RegistryHost::parse("https://index.docker.io/v1/").unwrap();
        assert_eq!(h.key, "docker.io");
        assert_eq!(h.api, "registry-1.docker.io");
        assert_eq!(h.scheme, Some(Scheme::Https));
        let h = RegistryHost::parse("Registry.Example.com:5000").unwrap();
        assert_eq!(h.key, "registry.example.com:5000");
        assert_eq!(h.api, h.key);
        assert_eq!(h.scheme, None);
        let h = RegistryHost::parse("http://127.0.0.1:5000/").unwrap();
        assert_eq!(h.key, "127.0.0.1:5000");
        assert_eq!(h.scheme, Some(Scheme::Http));
        assert_eq!(RegistryHost::parse("[::1]:80").unwrap().key, "[::1]:80");
        assert_eq!(
            RegistryHost::for_domain("docker.io").unwrap().api,
            "registry-1.docker.io"
        );
    }

    #[test]
    fn rejects_malformed_hosts_naming_them() {
        for bad in [
            "",
            "ftp://x",
            "host:port",
            "host:0",
            "host:70000",
            "a b",
            "-a.com",
            "user:pw@host",
            "[zz]:1",
            "[::1",
        ] {
            let err = RegistryHost::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn loopback_is_localhost_127_and_v6_one() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "localhost.example.com",
            "128.0.0.1",
            "10.0.0.1:5000",
            "[::2]:1",
            "registry.invalid:5000",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn insecure_entries_match_host_or_host_and_port() {
        let insecure = vec!["reg.lan".to_owned(), "other.lan:5000".to_owned()];
        assert!(plain_http_allowed("reg.lan", &insecure));
        assert!(plain_http_allowed("reg.lan:1234", &insecure));
        assert!(plain_http_allowed("REG.lan:1234", &insecure));
        assert!(plain_http_allowed("other.lan:5000", &insecure));
        assert!(!plain_http_allowed("other.lan:5001", &insecure));
        assert!(!plain_http_allowed("other.lan", &insecure));
        assert!(!plain_http_allowed("reg.lan.evil.com", &insecure));
        assert!(plain_http_allowed("127.0.0.1:9", &[]));
        assert!(!plain_http_allowed("registry.invalid:5000", &[]));
        assert!(plain_http_allowed(
            "registry.invalid:5000",
            &["http://registry.invalid:5000/".to_owned()]
        ));
    }
}
