//! A server killed with SIGKILL loses nothing: queued jobs stay queued, the
//! running one stays running, and goes back to the queue once its runner has
//! been silent for `lost_after`.
//!
//! The server to kill runs in a child process: this test binary again, running
//! the ignored test `killable_server` with `KILN_SERVER_CHILD_DIR` set.

mod common;

use common::{call, next};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "KILN_SERVER_CHILD_DIR";

/// Not a test on its own: the server process the durability test kills.
#[tokio::test]
#[ignore = "run by jobs_survive_a_killed_server in a child process"]
async fn killable_server() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by jobs_survive_a_killed_server");
    let dir = Path::new(&dir);
    let (addr, handle, _) = common::serve(dir, Duration::from_secs(10)).await;
    let ready = dir.join("addr.tmp");
    std::fs::write(&ready, addr.to_string()).unwrap();
    std::fs::rename(&ready, dir.join("addr")).unwrap();
    handle.await.unwrap();
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn jobs_survive_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killable_server", "--ignored", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = wait_for_file(&dir.path().join("addr"))
        .await
        .parse()
        .unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    let admin_post = |path: &'static str, body: serde_json::Value| {
        let http = &http;
        let admin = &admin;
        async move {
            let (status, value) =
                call(http, addr, Method::POST, path, Some(admin), Some(body)).await;
            assert!(status.is_success(), "{path}: {status} {value}");
            value
        }
    };
    admin_post(
        "/api/repos",
        json!({ "name": "app", "url": "https://x.test/app.git" }),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            admin_post("/api/repos/app/jobs", json!({})).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let registration = admin_post("/api/runner-tokens", json!({})).await;
    let (status, runner) = call(
        &http,
        addr,
        Method::POST,
        "/api/runners/register",
        registration["token"].as_str(),
        Some(json!({ "name": "r1", "labels": [] })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let runner_id = runner["runner_id"].as_i64().unwrap();
    let runner = runner["token"].as_str().unwrap().to_owned();
    let taken = next(&http, addr, &runner, 0).await.unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(taken, ids[0]);

    // No shutdown of any kind: the process is gone between one instruction and the next.
    child.kill().unwrap();
    child.wait().unwrap();

    let lost_after = Duration::from_secs(2);
    let (addr, server, again) = common::serve(dir.path(), lost_after).await;
    let restarted = Instant::now();
    assert!(again.is_none());
    let job = |id: i64| {
        let http = &http;
        let admin = &admin;
        async move {
            let (status, job) = call(
                http,
                addr,
                Method::GET,
                &format!("/api/jobs/{id}"),
                Some(admin),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{job}");
            job
        }
    };
    let running = job(taken).await;
    assert!(
        restarted.elapsed() < lost_after,
        "too slow to see the job before the reaper"
    );
    assert_eq!(running["status"], "running");
    assert_eq!(running["runner"], runner_id);
    for &id in &ids[1..] {
        assert_eq!(job(id).await["status"], "queued");
    }

    // The runner never comes back: its job returns to the queue, attempt 2.
    let deadline = Instant::now() + Duration::from_secs(20);
    let requeued = loop {
        let now = job(taken).await;
        if now["status"] == "queued" {
            break now;
        }
        assert_eq!(now["status"], "running");
        assert!(
            Instant::now() < deadline,
            "the lost runner's job was never requeued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        restarted.elapsed() >= lost_after,
        "requeued before lost_after"
    );
    assert_eq!(requeued["attempt"], 2);
    assert_eq!(requeued["runner"], serde_json::Value::Null);

    // A new runner gets it first (oldest queued), and its old runner may no longer touch it.
    let registration = call(
        &http,
        addr,
        Method::POST,
        "/api/runner-tokens",
        Some(&admin),
        None,
    )
    .await
    .1;
    let (_, fresh) = call(
        &http,
        addr,
        Method::POST,
        "/api/runners/register",
        registration["token"].as_str(),
        Some(json!({ "name": "r2", "labels": [] })),
    )
    .await;
    let fresh = fresh["token"].as_str().unwrap();
    assert_eq!(next(&http, addr, fresh, 0).await.unwrap()["id"], taken);
    let (status, _) = call(
        &http,
        addr,
        Method::POST,
        &format!("/api/runner/jobs/{taken}/finish"),
        Some(&runner),
        Some(json!({ "status": "succeeded" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.abort();
}

#[tokio::test]
async fn a_runner_that_keeps_heartbeating_keeps_its_job() {
    let server = common::TestServer::start_with(Duration::from_millis(600)).await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, runner) = server.register_runner("r1").await;
    assert!(server.next(&runner, 0).await.is_some());
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (status, body) = server
            .call(
                Method::POST,
                "/api/runner/heartbeat",
                Some(&runner),
                Some(json!({ "jobs": [id] })),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["cancel"], json!([]));
    }
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["status"], "running");
    assert_eq!(job["attempt"], 1);
}
