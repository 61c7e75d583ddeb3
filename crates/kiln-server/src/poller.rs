//! Polling: for repos with `poll_seconds > 0`, run
//! `git ls-remote URL refs/heads/BRANCH` every `poll_seconds` and queue a job
//! when the branch's head differs from the last one seen (the first one seen
//! included). The last commit seen is kept in the repos table, so a restart
//! does not queue the same commit again.

use crate::server::AppState;
use crate::store::{now_micros, Repo};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

/// How often the poller looks for repos that are due; the finest
/// `poll_seconds` is 1.
const TICK: Duration = Duration::from_secs(1);

/// The longest one `git ls-remote` may take; a remote that hangs is killed.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs until aborted. Each repo has at most one `ls-remote` running; a slow
/// one does not hold up the others.
pub(crate) async fn poll_repos(shared: AppState) {
    // When each repo is next due; `None`: a period too long to schedule.
    let mut due: HashMap<String, Option<Instant>> = HashMap::new();
    let mut polls = JoinSet::new();
    let mut polling: HashMap<Id, String> = HashMap::new();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(done) = polls.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => {
                        tracing::error!(error = %err, "a repo poll failed");
                        err.id()
                    }
                };
                polling.remove(&id);
                continue;
            }
        }
        // Errors are logged by `db`; the next tick tries again.
        let Ok(repos) = shared.db(|store| store.repos()).await else {
            continue;
        };
        let repos: Vec<Repo> = repos
            .into_iter()
            .filter(|repo| repo.poll_seconds > 0)
            .collect();
        due.retain(|name, _| repos.iter().any(|repo| &repo.name == name));
        let now = Instant::now();
        for repo in repos {
            let not_yet = match due.get(&repo.name) {
                Some(Some(at)) => *at > now,
                Some(None) => true,
                None => false,
            };
            if not_yet || polling.values().any(|name| name == &repo.name) {
                continue;
            }
            let period = Duration::from_secs(repo.poll_seconds.unsigned_abs());
            due.insert(repo.name.clone(), now.checked_add(period));
            let name = repo.name.clone();
            let handle = polls.spawn(poll_one(shared.clone(), repo));
            polling.insert(handle.id(), name);
        }
    }
}

async fn poll_one(shared: AppState, repo: Repo) {
    let commit = match ls_remote(&repo.url, &repo.branch).await {
        Ok(Some(commit)) => commit,
        Ok(None) => {
            tracing::warn!(repo = %repo.name, branch = %repo.branch, "the remote has no such branch");
            return;
        }
        Err(err) => {
            // The url may hold credentials: `err` has it replaced.
            tracing::warn!(repo = %repo.name, error = %err, "cannot poll the remote");
            return;
        }
    };
    let name = repo.name.clone();
    let queued = shared
        .db(move |store| store.record_polled_commit(&name, &commit, now_micros()))
        .await;
    if let Ok(Some(job)) = queued {
        tracing::info!(repo = %repo.name, job, "queued a job for a new commit");
        shared.queued.notify_waiters();
    }
}

/// Why a poll found no commit.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git ls-remote took longer than {}s and was stopped", LS_REMOTE_TIMEOUT.as_secs())]
    Timeout,
    #[error("git ls-remote failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The commit `refs/heads/BRANCH` points at on the remote `url`, or `None`
/// if there is no such branch.
async fn ls_remote(url: &str, branch: &str) -> Result<Option<String>, PollError> {
    let wanted = format!("refs/heads/{branch}");
    let mut command = tokio::process::Command::new("git");
    command
        // `--`: a url is never an option (urls starting with '-' are refused anyway).
        .args(["ls-remote", "--", url, &wanted])
        // A remote that wants a password fails instead of waiting for one.
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped on timeout or abort: git must not outlive its poll.
        .kill_on_drop(true);
    let output = tokio::time::timeout(LS_REMOTE_TIMEOUT, command.output())
        .await
        .map_err(|_| PollError::Timeout)?
        .map_err(PollError::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(PollError::Failed {
            status: output.status,
            stderr: stderr.trim().replace(url, "<url>"),
        });
    }
    Ok(head_of(&String::from_utf8_lossy(&output.stdout), &wanted))
}

/// The object name `git ls-remote` printed for exactly `wanted`.
fn head_of(listing: &str, wanted: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let (commit, name) = line.split_once('\t')?;
        let commit = commit.trim();
        let is_object_name =
            !commit.is_empty() && commit.bytes().all(|byte| byte.is_ascii_hexdigit());
        (name.trim() == wanted && is_object_name).then(|| commit.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_of_exactly_the_branch_is_taken() {
        let listing = "1111111111111111111111111111111111111111\trefs/heads/main-old\n\
                       2222222222222222222222222222222222222222\trefs/heads/main\n";
        assert_eq!(
            head_of(listing, "refs/heads/main").as_deref(),
            Some("2222222222222222222222222222222222222222")
        );
        assert_eq!(head_of(listing, "refs/heads/dev"), None);
        assert_eq!(head_of("", "refs/heads/main"), None);
        assert_eq!(
            head_of("warning: x\trefs/heads/main\n", "refs/heads/main"),
            None
        );
    }

    #[tokio::test]
    async fn ls_remote_reads_a_real_repository_and_hides_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .args(["-c", "user.name=k", "-c", "user.email=k@k", "-C"])
                .arg(dir.path())
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        git(&["init", "-q", "-b", "main"]);
        git(&["commit", "-q", "--allow-empty", "-m", "one"]);
        let url = dir.path().to_str().unwrap();
        let head = ls_remote(url, "main").await.unwrap().unwrap();
        assert_eq!(head.len(), 40);
        assert_eq!(ls_remote(url, "nope").await.unwrap(), None);

        let missing = format!("{url}/secret-token-in-url");
        let err = ls_remote(&missing, "main").await.unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, PollError::Failed { .. }), "{shown}");
        assert!(!shown.contains("secret-token-in-url"), "{shown}");
    }
}
