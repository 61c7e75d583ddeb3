//! Checking a job's commit out into a fresh directory with git.
//!
//! `git init`, then a shallow fetch of exactly the commit (or the ref, when
//! the job names no commit), then a detached checkout of what was fetched.
//! Servers that refuse to hand out a commit by its bare sha (GitHub allows
//! it, a plain `git daemon` or an old server may not) get a full fetch of
//! branches and tags, and the commit is checked out from those.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

/// Checks `commit` (or `git_ref`) of `url` out into `dir`, which is
/// replaced if it exists. Returns the commit checked out.
pub async fn checkout(
    dir: &Path,
    url: &str,
    commit: Option<&str>,
    git_ref: &str,
) -> Result<String> {
    if url.starts_with('-') {
        bail!("refusing repository url {url:?}: it would read as a git option");
    }
    let wanted = commit.unwrap_or(git_ref);
    if wanted.starts_with('-') {
        bail!("refusing to fetch {wanted:?}: it would read as a git option");
    }
    fresh_dir(dir).await?;
    git(dir, url, &["init", "-q"]).await?;
    match git(dir, url, &["fetch", "-q", "--depth", "1", url, wanted]).await {
        Ok(_) => {
            git(dir, url, &["checkout", "-q", "--detach", "FETCH_HEAD"]).await?;
        }
        Err(shallow) => {
            let Some(commit) = commit else {
                return Err(shallow);
            };
            let full = [
                "fetch",
                "-q",
                url,
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ];
            let fetched_all = match git(dir, url, &full).await {
                Ok(_) => git(dir, url, &["checkout", "-q", "--detach", commit]).await,
                Err(e) => Err(e),
            };
            if let Err(e) = fetched_all {
                bail!("{shallow:#}\nthen, after fetching all branches and tags: {e:#}");
            }
        }
    }
    let head = git(dir, url, &["rev-parse", "HEAD"]).await?;
    let head = head.trim().to_owned();
    if let Some(commit) = commit {
        if !head.starts_with(&commit.to_ascii_lowercase()) {
            bail!("asked for commit {commit}, but git checked out {head}");
        }
    }
    Ok(head)
}

/// The repository URL as it may be shown: without a password in it.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

async fn fresh_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the old checkout {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the checkout directory {}", dir.display()))
    })
    .await?
}

/// Runs git in `dir`; its stdout, or an error holding its stderr.
async fn git(dir: &Path, url: &str, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        // Never wait for a password nobody will type.
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        // Ctrl-C on the runner's terminal is the runner's to handle: it
        // must not kill a fetch the runner means to finish.
        .process_group(0)
        .kill_on_drop(true)
        .output()
        .await
        .context("running git (is it installed?)")?;
    if !output.status.success() {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.replace(url, &shown_url(url)))
            .collect();
        let stderr = String::from_utf8_lossy(&output.stderr).replace(url, &shown_url(url));
        bail!(
            "git {} failed ({}):\n{}",
            shown.join(" "),
            output.status,
            stderr.trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(
            shown_url("https://user:s3cret@git.example.com/a/b.git"),
            "https://***@git.example.com/a/b.git"
        );
        assert_eq!(
            shown_url("https://git.example.com/a@b.git"),
            "https://git.example.com/a@b.git"
        );
        assert_eq!(shown_url("/srv/git/app"), "/srv/git/app");
        assert_eq!(
            shown_url("git@github.com:org/app.git"),
            "git@github.com:org/app.git"
        );
    }
}
