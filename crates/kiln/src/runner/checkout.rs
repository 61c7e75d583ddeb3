//! Checking a job's commit out into a fresh directory with git.
//!
//! Each repository URL has a bare mirror under `WORK/mirrors/` that lives
//! as long as the work directory. A job whose commit the mirror already has
//! costs one `git cat-file` and one `git archive`, unpacked here: the same
//! commit built again (a retry, another pipeline run, the dispatch
//! benchmark) never reaches the remote. Otherwise the mirror fetches exactly
//! the commit, shallow (or the ref, when the job names no commit); remotes
//! that refuse to hand out a commit by its bare sha (GitHub allows it, a plain
//! `git daemon` or an old server may not) get a full fetch of branches and
//! tags instead. A file lock per mirror serialises fetches, also between
//! runners sharing a work directory; unpacking only reads the mirror.
//!
//! The checkout holds the commit's files without a `.git` directory: the
//! pipeline sees the tree, as `kiln run` sees a working copy.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

/// Checks `commit` (or the head of `git_ref`) of `url` out into `dir`,
/// which is replaced if it exists, through the mirror kept under
/// `mirrors`. Returns the commit checked out.
pub async fn checkout(
    mirrors: &Path,
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
    let mirror = mirrors.join(mirror_name(url));
    let head = {
        let _fetching = lock_mirror(&mirror).await?;
        fetch_into_mirror(&mirror, url, commit, git_ref).await?
    };
    fresh_dir(dir).await?;
    unpack_commit(&mirror, &head, dir).await?;
    Ok(head)
}

/// One directory per URL; the name says nothing about the URL, which may
/// hold a password.
fn mirror_name(url: &str) -> String {
    let digest = blake3::hash(url.as_bytes()).to_hex();
    format!("{}.git", &digest[..32])
}

/// Creates the mirror if needed and takes its lock (released on drop).
async fn lock_mirror(mirror: &Path) -> Result<kiln_store::FileLock> {
    let mirror = mirror.to_owned();
    tokio::task::spawn_blocking(move || -> Result<kiln_store::FileLock> {
        std::fs::create_dir_all(&mirror)
            .with_context(|| format!("creating the mirror {}", mirror.display()))?;
        let lock = kiln_store::FileLock::exclusive(&mirror.join("kiln-fetch.lock"))?;
        remove_stale_git_locks(&mirror);
        Ok(lock)
    })
    .await?
}

/// Removes the lock files a git process killed mid-fetch leaves (a
/// cancelled job, a killed runner): with the mirror's lock held no other
/// git process of ours works in it, so any git lock there is stale, and
/// git would refuse every later fetch with "shallow.lock: File exists".
fn remove_stale_git_locks(mirror: &Path) {
    for name in [
        "shallow.lock",
        "index.lock",
        "HEAD.lock",
        "config.lock",
        "packed-refs.lock",
    ] {
        let _ = std::fs::remove_file(mirror.join(name));
    }
    let mut dirs = vec![mirror.join("refs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "lock") => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
    }
}

/// Makes sure the mirror holds the commit; returns its full name.
async fn fetch_into_mirror(
    mirror: &Path,
    url: &str,
    commit: Option<&str>,
    git_ref: &str,
) -> Result<String> {
    if !mirror.join("HEAD").exists() {
        git(mirror, url, &["init", "-q", "--bare"]).await?;
        // Fetched commits hang from no ref; automatic gc must not prune them.
        git(mirror, url, &["config", "gc.auto", "0"]).await?;
    }
    let Some(commit) = commit else {
        git(
            mirror,
            url,
            &["fetch", "-q", "--no-tags", "--depth", "1", url, git_ref],
        )
        .await?;
        return resolve(mirror, url, "FETCH_HEAD").await;
    };
    if let Ok(head) = resolve(mirror, url, commit).await {
        return Ok(head);
    }
    let shallow = git(
        mirror,
        url,
        &["fetch", "-q", "--no-tags", "--depth", "1", url, commit],
    )
    .await;
    if let Err(shallow) = &shallow {
        let full = [
            "fetch",
            "-q",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ];
        if let Err(e) = git(mirror, url, &full).await {
            bail!("{shallow:#}\nthen, fetching all branches and tags: {e:#}");
        }
    }
    let head = match (resolve(mirror, url, commit).await, shallow) {
        (Ok(head), _) => head,
        (Err(_), Err(shallow)) => {
            bail!("{shallow:#}\nand no branch or tag of the repository leads to commit {commit}")
        }
        (Err(e), Ok(_)) => return Err(e.context(format!("the repository has no commit {commit}"))),
    };
    if !head.starts_with(&commit.to_ascii_lowercase()) {
        bail!("asked for commit {commit}, but git found {head}");
    }
    Ok(head)
}

/// The full commit name `rev` stands for in the mirror.
async fn resolve(mirror: &Path, url: &str, rev: &str) -> Result<String> {
    let spec = format!("{rev}^{{commit}}");
    let out = git(mirror, url, &["rev-parse", "-q", "--verify", &spec]).await?;
    Ok(out.trim().to_owned())
}

/// Writes the commit's tree into `dir` from `git archive`, unpacked by the
/// tar crate, which refuses entries that would land outside `dir`.
async fn unpack_commit(mirror: &Path, commit: &str, dir: &Path) -> Result<()> {
    let (mirror, commit, dir) = (mirror.to_owned(), commit.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut child = std::process::Command::new("git")
            .args(["archive", "--format=tar", &commit])
            .current_dir(&mirror)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("running git (is it installed?)")?;
        let stdout = child.stdout.take().context("git archive has no stdout")?;
        let mut archive = tar::Archive::new(stdout);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(false);
        let unpacked = archive.unpack(&dir);
        // Whatever git did not write is read and dropped, so it can exit.
        let mut rest = archive.into_inner();
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let status = child.wait().context("waiting for git archive")?;
        if !status.success() {
            bail!(
                "git archive {commit} failed ({status}):\n{}",
                stderr.trim_end()
            );
        }
        unpacked.with_context(|| format!("unpacking commit {commit} into {}", dir.display()))
    })
    .await?
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

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[tokio::test]
    async fn locks_left_by_a_killed_fetch_do_not_block_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("f"), "one").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        let url = repo.to_str().unwrap();
        let mirrors = dir.path().join("mirrors");
        checkout(&mirrors, &dir.path().join("c1"), url, None, "main")
            .await
            .unwrap();
        // What a git fetch killed by a cancelled job leaves behind.
        let mirror = mirrors.join(mirror_name(url));
        std::fs::write(mirror.join("shallow.lock"), "").unwrap();
        std::fs::create_dir_all(mirror.join("refs/heads")).unwrap();
        std::fs::write(mirror.join("refs/heads/main.lock"), "").unwrap();
        std::fs::write(repo.join("f"), "two").unwrap();
        git(&repo, &["commit", "-q", "-am", "two"]);
        let second = git(&repo, &["rev-parse", "HEAD"]);
        let head = checkout(&mirrors, &dir.path().join("c2"), url, Some(&second), "main")
            .await
            .unwrap();
        assert_eq!(head, second);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c2/f")).unwrap(),
            "two"
        );
    }

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
