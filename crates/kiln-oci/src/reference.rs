//! Image references as Docker and OCI tools spell them, normalised so the
//! same image always gets the same store tag.

use std::fmt;
use std::str::FromStr;

use kiln_store::Digest;

use crate::Error;

/// The registry short names resolve against.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A normalised image reference: `domain/path[:tag][@sha256:...]`.
///
/// Short Docker Hub names are expanded the way `docker` does:
/// `alpine:3.20` is `docker.io/library/alpine:3.20`, `busybox` is
/// `docker.io/library/busybox:latest`. Display prints the full form, which
/// parses back to the same value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry host (and port), e.g. `docker.io`, `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry, e.g. `library/alpine`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, Error> {
        format!("{}:{tag}", self.repository()).parse()
    }

    /// The canonical string kiln uses as the store tag for this image.
    pub fn name_in_store(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::InvalidReference {
            reference: s.to_owned(),
            why: why.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                if !digest.starts_with("sha256:") {
                    return Err(bad("only sha256 digests are supported"));
                }
                let digest = digest.parse::<Digest>().map_err(|_| {
                    bad("digest must be sha256: followed by 64 lowercase hex digits")
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(bad)?;
        }
        if name.is_empty() {
            return Err(bad("missing repository name"));
        }
        let (domain, path) = split_domain(name);
        validate_domain(&domain).map_err(bad)?;
        validate_path(&path).map_err(bad)?;
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(bad("repository name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }
}

/// Splits off the registry the way `docker` does: the first component is a
/// host only if it looks like one (has '.', ':', or is `localhost`, or has
/// uppercase letters, which repository paths cannot).
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_owned()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn validate_domain(domain: &str) -> Result<(), &'static str> {
    let (host, port) = if domain.starts_with('[') {
        let Some(end) = domain.find(']') else {
            return Err("malformed IPv6 registry address");
        };
        let (host, rest) = domain.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("malformed IPv6 registry address"),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("registry port must be a number");
        }
    }
    if let Some(ipv6) = host.strip_prefix('[') {
        let ok = ipv6.strip_suffix(']').is_some_and(|a| {
            !a.is_empty() && a.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        });
        return if ok {
            Ok(())
        } else {
            Err("malformed IPv6 registry address")
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
        Err("registry host must be letters, digits, '-' and '.'")
    }
}

fn validate_path(path: &str) -> Result<(), &'static str> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err("repository path has an empty component");
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(
                "repository path components must start and end with a lowercase letter or digit",
            );
        }
        // Separators: '.', '_', '__', or any run of '-'.
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
            if !ok {
                return Err(if sep.bytes().any(|b| b.is_ascii_uppercase()) {
                    "repository names must be lowercase"
                } else {
                    "repository path may only contain lowercase letters, digits and the separators '.', '_', '__', '-'"
                });
            }
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [] => Err("empty tag"),
        t if t.len() > 128 => Err("tag is longer than 128 characters"),
        [first, rest @ ..] if word(*first) && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-') => Ok(()),
        _ => Err("tag may only contain letters, digits, '_', '.' and '-', and must not start with '.' or '-'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn norm(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn normalises_docker_hub_short_names() {
        assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(norm("someone/tool:v1"), "docker.io/someone/tool:v1");
    }

    #[test]
    fn keeps_other_registries_and_ports() {
        assert_eq!(norm("localhost:5000/app:dev"), "localhost:5000/app:dev");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(
            norm("ghcr.io/org/sub/app:1.2.3"),
            "ghcr.io/org/sub/app:1.2.3"
        );
        assert_eq!(norm("registry:5000/app"), "registry:5000/app:latest");
        assert_eq!(norm("[::1]:5000/app:x"), "[::1]:5000/app:x");
        assert_eq!(norm("[::1]/app"), "[::1]/app:latest");
        let r: Reference = "host:5000/name:tag".parse().unwrap();
        assert_eq!(r.domain(), "host:5000");
        assert_eq!(r.path(), "name");
        assert_eq!(r.tag(), Some("tag"));
    }

    #[test]
    fn digests() {
        let r: Reference = format!("alpine@{D}").parse().unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{D}"));
        let both: Reference = format!("alpine:3@{D}").parse().unwrap();
        assert_eq!(both.to_string(), format!("docker.io/library/alpine:3@{D}"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "alpine",
            "alpine:3.20",
            "a.b/c/d:e",
            "localhost:5000/x_y.z__w---v:T_1.2-3",
            &format!("busybox@{D}"),
            &format!("h:1/n:t@{D}"),
        ] {
            let r: Reference = s.parse().unwrap();
            let again: Reference = r.to_string().parse().unwrap();
            assert_eq!(r, again, "{s}");
            assert_eq!(r.name_in_store(), again.to_string());
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            ":tag",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "alpine:.x",
            "a//b",
            "a/",
            "/a",
            "alpine@sha256:abc",
            "alpine@md5:0123",
            "host:port/x",
            "a..b",
            "-a",
            "a b",
            &format!("a:{}", "t".repeat(129)),
        ] {
            let err = bad.parse::<Reference>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
