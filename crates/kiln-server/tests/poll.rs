//! Polling a real git repository in a temp dir: each new head of the branch
//! queues one job, the same head none, and `poll_seconds = 0` never polls.

mod common;

use common::TestServer;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.test",
            "-C",
        ])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// The jobs of `repo`, newest first.
async fn jobs_of(server: &TestServer, repo: &str) -> Vec<Value> {
    let jobs = server.admin_get("/api/jobs").await;
    jobs.as_array()
        .unwrap()
        .iter()
        .filter(|job| job["repo"] == repo)
        .cloned()
        .collect()
}

async fn wait_for_jobs(server: &TestServer, repo: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = jobs_of(server, repo).await;
        if jobs.len() >= count {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{repo} has {} jobs, expected {count}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn each_new_commit_on_the_polled_branch_queues_one_job() {
    let server = TestServer::start().await;
    let remote = tempfile::tempdir().unwrap();
    git(remote.path(), &["init", "-q", "-b", "main"]);
    let first = commit(remote.path(), "one");
    // A commit on another branch is not what the repo builds.
    git(remote.path(), &["branch", "other"]);
    let url = remote.path().to_str().unwrap();
    server
        .admin_post(
            "/api/repos",
            json!({ "name": "polled", "url": url, "branch": "main", "poll_seconds": 1 }),
        )
        .await;
    // Same remote, default poll_seconds (0): never polled.
    server
        .admin_post("/api/repos", json!({ "name": "quiet", "url": url }))
        .await;
    let repos = server.admin_get("/api/repos").await;
    assert_eq!(repos[1]["name"], "quiet");
    assert_eq!(repos[1]["poll_seconds"], 0);

    // The first head seen queues a job.
    let jobs = wait_for_jobs(&server, "polled", 1).await;
    assert_eq!(jobs[0]["git_ref"], "main");
    assert_eq!(jobs[0]["commit"], first.as_str());
    assert_eq!(jobs[0]["status"], "queued");

    // The same head polled again queues nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(jobs_of(&server, "polled").await.len(), 1);

    let second = commit(remote.path(), "two");
    let jobs = wait_for_jobs(&server, "polled", 2).await;
    assert_eq!(jobs[0]["commit"], second.as_str());
    assert_eq!(jobs[0]["git_ref"], "main");
    assert_eq!(jobs[1]["commit"], first.as_str());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(jobs_of(&server, "polled").await.len(), 2);
    assert!(jobs_of(&server, "quiet").await.is_empty());
}

#[tokio::test]
async fn a_polled_commit_wakes_a_waiting_runner() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let remote = tempfile::tempdir().unwrap();
    git(remote.path(), &["init", "-q", "-b", "trunk"]);
    let head = commit(remote.path(), "one");
    let (_, runner) = server.register_runner("r1").await;
    let waiting = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move { server.next(&runner, 20_000).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    server
        .admin_post(
            "/api/repos",
            json!({
                "name": "app",
                "url": remote.path().to_str().unwrap(),
                "branch": "trunk",
                "poll_seconds": 1,
            }),
        )
        .await;
    let job = waiting.await.unwrap().expect("the runner was not woken");
    assert_eq!(job["commit"], head.as_str());
    assert_eq!(job["git_ref"], "trunk");
    assert!(asked.elapsed() < Duration::from_secs(10));
}
