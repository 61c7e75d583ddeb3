//! What a repository URL is, as git will read it: a network remote any admin
//! or API token may register, a local path that needs the admin token or a
//! configured root, or something else (a transport helper such as `ext::`,
//! an unusual scheme) that needs the admin token. And what no one may
//! register: URLs git would take for an option.
//!
//! The classification follows git's own order: `<transport>::<address>` is a
//! helper, `scheme://` a URL, a colon before any slash scp-like ssh
//! (`[user@]host:path`), anything else a local path.

use std::path::{Component, Path, PathBuf};

/// What kind of remote a URL names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UrlKind {
    /// `https://`, `http://`, `ssh://` (`git+ssh://`, `ssh+git://`),
    /// `git://`, or scp-like `[user@]host:path`.
    Network,
    /// A bare path or a `file://` URL: the absolute path, when it is one
    /// that can be compared with a root (`None`: relative, `~`, another
    /// host's `file://`, or percent-encoded).
    Local(Option<PathBuf>),
    /// A transport helper (`ext::`, `fd::`, ...) or another scheme.
    Other,
}

const NETWORK_SCHEMES: [&str; 6] = ["https", "http", "ssh", "git+ssh", "ssh+git", "git"];

/// What `url` is, or why no one may register it.
pub(crate) fn classify(url: &str) -> Result<UrlKind, &'static str> {
    if url.trim().is_empty() {
        return Err("is empty");
    }
    if url.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    // git would take such a url for an option.
    if url.starts_with('-') {
        return Err("must not start with '-'");
    }
    if url.contains("::") {
        return Ok(UrlKind::Other);
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            return Ok(UrlKind::Local(file_url_path(rest)));
        }
        if !NETWORK_SCHEMES.contains(&scheme.as_str()) {
            return Ok(UrlKind::Other);
        }
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        check_host(authority)?;
        return Ok(UrlKind::Network);
    }
    let colon = url.find(':');
    let slash = url.find('/');
    match (colon, slash) {
        // scp-like: a colon before any slash is ssh to the host before it.
        (Some(colon), slash) if slash.is_none_or(|slash| colon < slash) => {
            check_host(&url[..colon])?;
            Ok(UrlKind::Network)
        }
        _ => {
            let path = Path::new(url);
            Ok(UrlKind::Local(path.is_absolute().then(|| path.to_owned())))
        }
    }
}

/// `[user@]host[:port]`: ssh would read a host (or user) starting with '-'
/// as an option.
fn check_host(authority: &str) -> Result<(), &'static str> {
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if authority.starts_with('-') || host.starts_with('-') {
        return Err("names a user or host starting with '-'");
    }
    Ok(())
}

/// The path of a `file://` URL on this machine, if it can be read without
/// decoding: `file:///path` or `file://localhost/path`.
fn file_url_path(rest: &str) -> Option<PathBuf> {
    let path = if rest.starts_with('/') {
        rest
    } else {
        rest.strip_prefix("localhost")
            .filter(|path| path.starts_with('/'))?
    };
    (!path.contains('%')).then(|| PathBuf::from(path))
}

/// Whether `path` lies under one of `roots`: absolute, without `..`, and
/// under a root component by component (`/srv/git-old` is not under
/// `/srv/git`). Compared as written; symlinks are not resolved.
pub(crate) fn is_under(path: &Path, roots: &[PathBuf]) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|component| matches!(component, Component::ParentDir))
        && roots
            .iter()
            .any(|root| root.is_absolute() && path.starts_with(root))
}

/// Why `value` cannot be a branch or ref handed to git, if it cannot.
pub(crate) fn ref_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.starts_with('-') {
        Some("starts with '-', which git would read as an option")
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or control characters")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(path: &str) -> UrlKind {
        UrlKind::Local(Some(PathBuf::from(path)))
    }

    #[test]
    fn urls_are_read_as_git_reads_them() {
        for url in [
            "https://github.com/o/r.git",
            "HTTP://example.test/r",
            "ssh://git@example.test:2222/r.git",
            "git+ssh://example.test/r",
            "git://example.test/r",
            "git@github.com:o/r.git",
            "example.test:o/r.git",
        ] {
            assert_eq!(classify(url), Ok(UrlKind::Network), "{url}");
        }
        assert_eq!(classify("/srv/git/r"), Ok(local("/srv/git/r")));
        assert_eq!(classify("file:///srv/git/r"), Ok(local("/srv/git/r")));
        assert_eq!(
            classify("file://localhost/srv/git/r"),
            Ok(local("/srv/git/r"))
        );
        assert_eq!(classify("/srv/a:b"), Ok(local("/srv/a:b")));
        for url in [
            "r",
            "./r",
            "../r",
            "~/r",
            "file://host/srv/r",
            "file:///srv/%2e%2e/r",
            "file://localhostx/r",
        ] {
            assert_eq!(classify(url), Ok(UrlKind::Local(None)), "{url}");
        }
        for url in [
            "ext::sh -c id",
            "fd::3",
            "ftp://x.test/r",
            "persistent-https://x/r",
        ] {
            assert_eq!(classify(url), Ok(UrlKind::Other), "{url}");
        }
    }

    #[test]
    fn urls_git_would_take_for_options_are_refused() {
        for url in [
            "",
            "  ",
            "--upload-pack=touch /tmp/x",
            "-",
            "ssh://-oProxyCommand=x/r",
            "ssh://-u@host/r",
            "ssh://git@-oProxyCommand=x/r",
            "git@-oProxyCommand=x:r",
            "-oProxyCommand=x:r",
            "https://x.test/r\n",
            "https://x.test/\tr",
        ] {
            assert!(classify(url).is_err(), "{url:?}");
        }
    }

    #[test]
    fn roots_are_compared_by_component_without_dot_dot() {
        let roots = [PathBuf::from("/srv/git"), PathBuf::from("relative")];
        assert!(is_under(Path::new("/srv/git"), &roots));
        assert!(is_under(Path::new("/srv/git/a/b.git"), &roots));
        assert!(is_under(Path::new("/srv/git//a/./b"), &roots));
        assert!(!is_under(Path::new("/srv/git-old/a"), &roots));
        assert!(!is_under(Path::new("/srv/git/../etc"), &roots));
        assert!(!is_under(Path::new("/srv/git/a/../../etc"), &roots));
        assert!(!is_under(Path::new("/srv"), &roots));
        assert!(!is_under(Path::new("relative/a"), &roots));
        assert!(!is_under(Path::new("/srv/git/a"), &[]));
    }

    #[test]
    fn refs_git_would_take_for_options_are_refused() {
        for good in ["main", "refs/heads/release-1.2", "v1.0", "feature/x-y"] {
            assert_eq!(ref_problem(good), None, "{good}");
        }
        for bad in ["", "-b", "--upload-pack=x", "a b", "a\nb", "a\tb"] {
            assert!(ref_problem(bad).is_some(), "{bad:?}");
        }
    }
}
