//! The job queue over HTTP: long-polling, exactly-once delivery, logs, the
//! admin token file, and runners touching only their own jobs.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_waiting_runner_is_woken_by_the_trigger() {
    let server = Arc::new(TestServer::start().await);
    server.add_repo("app").await;
    let (runner_id, runner) = server.register_runner("r1").await;

    let poller = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let asked = Instant::now();
            let job = server.next(&runner, 20_000).await;
            (job, asked.elapsed())
        })
    };
    // Long enough for the request to be held by the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poller.is_finished(), "next returned with an empty queue");
    let triggered = Instant::now();
    let id = server.queue("app").await;
    let (job, waited) = poller.await.unwrap();
    let job = job.expect("the poll timed out instead of being woken");
    assert_eq!(job["id"], id);
    assert_eq!(job["url"], "https://git.example.test/app.git");
    assert_eq!(job["commit"], "0123abcd");
    // Woken, not timed out: far sooner than the 20 s the poll would wait.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert!(triggered.elapsed() < Duration::from_secs(10));

    let shown = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(shown["status"], "running");
    assert_eq!(shown["runner"], runner_id);
    for field in ["queued_at", "started_at"] {
        let stamp = shown[field].as_str().unwrap();
        // RFC 3339 with microseconds: 2026-01-02T03:04:05.123456Z
        assert_eq!(stamp.len(), 27, "{field} = {stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{stamp}"
        );
    }
    assert!(shown["queued_at"].as_str() <= shown["started_at"].as_str());
    assert_eq!(shown["finished_at"], serde_json::Value::Null);
}

#[tokio::test]
async fn an_empty_queue_answers_204_after_wait_ms() {
    let server = TestServer::start().await;
    let (_, runner) = server.register_runner("r1").await;
    let asked = Instant::now();
    assert!(server.next(&runner, 300).await.is_none());
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert!(server.next(&runner, 0).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_to_three_runners_each_delivered_once() {
    const JOBS: usize = 50;
    let server = Arc::new(TestServer::start().await);
    server.add_repo("app").await;
    let all_queued = Arc::new(AtomicBool::new(false));
    let mut runners = Vec::new();
    for index in 0..3 {
        let (runner_id, token) = server.register_runner(&format!("r{index}")).await;
        let server = Arc::clone(&server);
        let all_queued = Arc::clone(&all_queued);
        runners.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                // Read before asking: a 204 after everything was queued means the
                // queue is drained.
                let done = all_queued.load(Ordering::SeqCst);
                match server.next(&token, 500).await {
                    Some(job) => {
                        let id = job["id"].as_i64().unwrap();
                        let (status, body) = server
                            .call(
                                Method::POST,
                                &format!("/api/runner/jobs/{id}/finish"),
                                Some(&token),
                                Some(json!({ "status": "succeeded" })),
                            )
                            .await;
                        assert_eq!(status, StatusCode::OK, "{body}");
                        got.push(id);
                    }
                    None if done => return (runner_id, got),
                    None => {}
                }
            }
        }));
    }
    let mut queued = BTreeSet::new();
    for _ in 0..JOBS {
        queued.insert(server.queue("app").await);
    }
    all_queued.store(true, Ordering::SeqCst);

    let mut delivered = Vec::new();
    for runner in runners {
        let (runner_id, got) = runner.await.unwrap();
        for id in &got {
            let job = server.admin_get(&format!("/api/jobs/{id}")).await;
            assert_eq!(job["runner"], runner_id, "job {id}");
            assert_eq!(job["status"], "succeeded");
        }
        delivered.extend(got);
    }
    assert_eq!(delivered.len(), JOBS, "a job was delivered twice or lost");
    assert_eq!(delivered.into_iter().collect::<BTreeSet<_>>(), queued);
}

#[tokio::test]
async fn log_chunks_out_of_order_and_repeated_read_back_in_order() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, runner) = server.register_runner("r1").await;
    let (_, other) = server.register_runner("r2").await;
    assert_eq!(server.next(&runner, 0).await.unwrap()["id"], id);

    let post = |token: String, chunks: serde_json::Value| {
        let path = format!("/api/runner/jobs/{id}/logs");
        let server = &server;
        async move {
            server
                .call(Method::POST, &path, Some(&token), Some(chunks))
                .await
        }
    };
    let sends = [
        json!([{ "seq": 2, "stream": "stdout", "data": "two\n" }]),
        json!([
            { "seq": 0, "stream": "stdout", "data": "zero\n" },
            { "seq": 3, "stream": "stderr", "data": "three\n" }
        ]),
        // A retransmission of seq 2 (the first answer was lost) and seq 1.
        json!([
            { "seq": 2, "stream": "stdout", "data": "two\n" },
            { "seq": 1, "stream": "stderr", "data": "one\n" }
        ]),
    ];
    for chunks in sends {
        let (status, body) = post(runner.clone(), chunks).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Not this runner's job, and a stream that does not exist: refused.
    let (status, _) = post(
        other.clone(),
        json!([{ "seq": 9, "stream": "stdout", "data": "x" }]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = post(
        runner.clone(),
        json!([{ "seq": 9, "stream": "video", "data": "x" }]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("video"), "{body}");

    let logs = server.admin_get(&format!("/api/jobs/{id}/logs")).await;
    assert_eq!(
        logs,
        json!([
            { "seq": 0, "stream": "stdout", "data": "zero\n" },
            { "seq": 1, "stream": "stderr", "data": "one\n" },
            { "seq": 2, "stream": "stdout", "data": "two\n" },
            { "seq": 3, "stream": "stderr", "data": "three\n" }
        ])
    );
}

#[tokio::test]
async fn runners_touch_only_their_own_jobs() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, runner) = server.register_runner("r1").await;
    let (_, other) = server.register_runner("r2").await;
    assert!(server.next(&runner, 0).await.is_some());

    let finish = format!("/api/runner/jobs/{id}/finish");
    let (status, _) = server
        .call(
            Method::POST,
            &finish,
            Some(&other),
            Some(json!({ "status": "succeeded" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}")).await["status"],
        "running"
    );

    let (status, _) = server
        .call(
            Method::POST,
            &finish,
            Some(&runner),
            Some(json!({ "status": "queued" })),
        )
        .await;
    assert!(status.is_client_error());
    let (status, _) = server
        .call(
            Method::POST,
            &finish,
            Some(&runner),
            Some(json!({ "status": "failed" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Finishing twice is a conflict, not a second result.
    let (status, _) = server
        .call(
            Method::POST,
            &finish,
            Some(&runner),
            Some(json!({ "status": "succeeded" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["status"], "failed");
    assert!(job["finished_at"].is_string());
}

#[tokio::test]
async fn cancel_and_retry() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/api/jobs/{id}/retry"),
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a queued job is not retried");
    server
        .admin_post(&format!("/api/jobs/{id}/cancel"), json!({}))
        .await;
    let (_, runner) = server.register_runner("r1").await;
    assert!(
        server.next(&runner, 0).await.is_none(),
        "a cancelled job was handed out"
    );
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/api/jobs/{id}/cancel"),
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let retried = server
        .admin_post(&format!("/api/jobs/{id}/retry"), json!({}))
        .await;
    let retried = retried["id"].as_i64().unwrap();
    assert_ne!(retried, id);
    let job = server.next(&runner, 0).await.unwrap();
    assert_eq!(job["id"], retried);
    assert_eq!(job["commit"], "0123abcd");
    let jobs = server.admin_get("/api/jobs").await;
    assert_eq!(jobs.as_array().unwrap().len(), 2);

    let (status, _) = server
        .call(Method::GET, "/api/jobs/999", Some(&server.admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_repo_input_is_refused_with_its_name() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/repos",
            Some(&server.admin),
            Some(json!({ "name": "app", "url": "https://x.test/a.git" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("app"));
    let (status, body) = server
        .call(
            Method::POST,
            "/api/repos",
            Some(&server.admin),
            Some(json!({ "name": "../x", "url": "https://x.test/a.git" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("../x"));
    let (status, body) = server
        .call(
            Method::POST,
            "/api/repos/ghost/jobs",
            Some(&server.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("ghost"));
    let (status, body) = server
        .call(
            Method::POST,
            "/api/repos",
            Some(&server.admin),
            Some(json!({ "name": "lib", "url": "https://x.test/l.git",
                         "limits": {"job_timeout_ms": 0} })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("limits.job_timeout_ms"));

    let repos = server.admin_get("/api/repos").await;
    assert_eq!(
        repos,
        json!([{
            "name": "app",
            "url": "https://git.example.test/app.git",
            "branch": "main",
            "poll_seconds": 0,
            "has_webhook_secret": false,
            "limits": {}
        }])
    );
}

#[tokio::test]
async fn admin_token_file_is_private_and_created_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (_, first, token) = common::serve(dir.path(), Duration::from_secs(10)).await;
    let token = token.expect("a new data dir gets an admin token");
    let path = dir.path().join("admin.token");
    // One line, as text files end; readers trim.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{token}\n")
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let db_mode = std::fs::metadata(dir.path().join("kiln.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(db_mode & 0o077, 0, "kiln.db is readable by others");
    first.abort();
    let _ = first.await;

    let (addr, second, again) = common::serve(dir.path(), Duration::from_secs(10)).await;
    assert!(again.is_none(), "a second admin token was made");
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim_end(), token);
    let http = reqwest::Client::new();
    let (status, _) = common::call(&http, addr, Method::GET, "/api/jobs", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    second.abort();
}

#[tokio::test]
async fn malformed_requests_get_json_errors_too() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let admin = Some(server.admin.as_str());
    // Not JSON, the wrong JSON, a path id that is not a number, a wrong
    // method, no such endpoint: each answers {"error": "..."} with its status.
    let response = server
        .http
        .post(server.url("/api/repos"))
        .bearer_auth(&server.admin)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    let cases = [
        (
            Method::POST,
            "/api/repos",
            Some(json!({ "name": "x" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/jobs/seven",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/api/jobs",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/api/nothing-here",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/runner/next?wait_ms=soon",
            None,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = server.call(method.clone(), path, admin, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        assert!(!message.is_empty());
    }
    let (_, answer) = server
        .call(
            Method::POST,
            "/api/repos",
            admin,
            Some(json!({ "name": "x" })),
        )
        .await;
    assert!(
        answer["error"].as_str().unwrap().contains("url"),
        "{answer}"
    );
}
