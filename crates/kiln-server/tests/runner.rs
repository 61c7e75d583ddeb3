//! What a runner reports and hears: steps, logs per attempt, and heartbeats
//! that cancel jobs and requeue the ones whose `next` answer was lost.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    server
        .call(Method::POST, path, Some(token), Some(body))
        .await
}

async fn heartbeat(server: &TestServer, token: &str, jobs: &[i64]) -> Value {
    let (status, body) = post(
        server,
        token,
        "/api/runner/heartbeat",
        json!({ "jobs": jobs }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls `GET /api/jobs/{id}` until `done` holds for it.
async fn wait_for_job(server: &TestServer, id: i64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = server.admin_get(&format!("/api/jobs/{id}")).await;
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} stayed {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn steps_are_replaced_by_number_and_shown_with_the_job() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (runner_id, runner) = server.register_runner("builder-1").await;
    let (_, other) = server.register_runner("builder-2").await;
    assert!(server.next(&runner, 0).await.is_some());
    let steps = format!("/api/runner/jobs/{id}/steps");

    let listed = server.admin_get("/api/jobs").await;
    assert_eq!(listed[0]["runner_name"], "builder-1");
    assert!(
        listed[0].get("steps").is_none(),
        "steps only in GET /api/jobs/{{id}}"
    );
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["runner"], runner_id);
    assert_eq!(job["runner_name"], "builder-1");
    assert_eq!(job["steps"], json!([]));

    let (status, body) = post(
        &server,
        &runner,
        &steps,
        json!([
            { "step": 2, "name": "go vet", "key": "blake3:bb", "status": "cached", "cached": true,
              "duration_ms": 0.0 },
            { "step": 1, "name": "go test", "key": "blake3:aa", "status": "running",
              "cached": false, "duration_ms": null }
        ]),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "received": 2 })));
    // Step 1 again, finished: it replaces the running one.
    let (status, _) = post(
        &server,
        &runner,
        &steps,
        json!([{ "step": 1, "name": "go test", "key": "blake3:aa", "status": "succeeded",
                 "cached": false, "duration_ms": 812.4 }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Another runner's job, a status that does not exist, a negative duration: refused.
    let one = json!([{ "step": 3, "name": "x", "key": "", "status": "running" }]);
    let (status, _) = post(&server, &other, &steps, one.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &server,
        &runner,
        &steps,
        json!([{ "step": 3, "name": "x", "key": "", "status": "sleeping" }]),
    )
    .await;
    assert!(status.is_client_error());
    let (status, body) = post(
        &server,
        &runner,
        &steps,
        json!([{ "step": 3, "name": "x", "status": "failed", "duration_ms": -1.0 }]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(
        job["steps"],
        json!([
            { "step": 1, "name": "go test", "key": "blake3:aa", "status": "succeeded",
              "cached": false, "duration_ms": 812.4 },
            { "step": 2, "name": "go vet", "key": "blake3:bb", "status": "cached",
              "cached": true, "duration_ms": 0.0 }
        ])
    );

    // Once finished, the job is no longer held: steps are refused.
    let (status, _) = post(
        &server,
        &runner,
        &format!("/api/runner/jobs/{id}/finish"),
        json!({ "status": "succeeded" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&server, &runner, &steps, one).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["steps"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_requeued_job_starts_a_fresh_attempt_and_its_old_runner_is_told_to_stop() {
    // Long enough that r2, once it holds the job, is not taken for lost too.
    let server = TestServer::start_with(Duration::from_millis(1500)).await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, first) = server.register_runner("r1").await;
    let (_, second) = server.register_runner("r2").await;
    let logs = format!("/api/runner/jobs/{id}/logs");
    assert_eq!(server.next(&first, 0).await.unwrap()["attempt"], 1);
    let (status, _) = post(
        &server,
        &first,
        &logs,
        json!([
            { "seq": 0, "stream": "stdout", "data": "first 0\n" },
            { "seq": 1, "stream": "stdout", "data": "first 1\n" }
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        &server,
        &first,
        &format!("/api/runner/jobs/{id}/steps"),
        json!([{ "step": 1, "name": "build", "key": "", "status": "running" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // r1 goes quiet; the reaper puts its job back.
    let requeued = wait_for_job(&server, id, |job| job["status"] == "queued").await;
    assert_eq!(requeued["attempt"], 2);
    assert_eq!(requeued["steps"], json!([]), "steps belong to the attempt");
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}/logs")).await,
        json!([]),
        "the new attempt has no log yet"
    );

    let claimed = server.next(&second, 0).await.unwrap();
    assert_eq!(
        (claimed["id"].as_i64(), claimed["attempt"].as_i64()),
        (Some(id), Some(2))
    );
    for data in ["second 0\n", "resent, ignored\n"] {
        let (status, _) = post(
            &server,
            &second,
            &logs,
            json!([{ "seq": 0, "stream": "stdout", "data": data }]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // r1 comes back: its posts are refused and its heartbeat says stop.
    let (status, _) = post(
        &server,
        &first,
        &logs,
        json!([{ "seq": 2, "stream": "stdout", "data": "first 2\n" }]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let answer = heartbeat(&server, &first, &[id]).await;
    assert_eq!(answer["cancel"], json!([id]));
    assert_eq!(
        heartbeat(&server, &second, &[id]).await["cancel"],
        json!([])
    );

    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}/logs")).await,
        json!([{ "seq": 0, "stream": "stdout", "data": "second 0\n" }])
    );
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["runner_name"], "r2");
    assert_eq!(job["status"], "running");
}

#[tokio::test]
async fn heartbeats_cancel_what_the_runner_must_drop() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let kept = server.queue("app").await;
    let cancelled = server.queue("app").await;
    let (runner_id, runner) = server.register_runner("r1").await;
    assert_eq!(server.next(&runner, 0).await.unwrap()["id"], kept);
    assert_eq!(server.next(&runner, 0).await.unwrap()["id"], cancelled);
    server
        .admin_post(&format!("/api/jobs/{cancelled}/cancel"), json!({}))
        .await;
    let answer = heartbeat(&server, &runner, &[kept, cancelled, 999]).await;
    assert_eq!(answer["runner_id"], runner_id);
    assert_eq!(answer["cancel"], json!([cancelled, 999]));
    let job = server.admin_get(&format!("/api/jobs/{kept}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_i64()),
        (Some("running"), Some(1))
    );
}

#[tokio::test]
async fn a_job_missing_from_heartbeats_goes_back_to_the_queue_and_wakes_a_runner() {
    let lost_after = Duration::from_millis(800);
    let server = Arc::new(TestServer::start_with(lost_after).await);
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, forgetful) = server.register_runner("r1").await;
    let (_, waiting) = server.register_runner("r2").await;
    // r1 claims the job but (as if the answer was lost) never lists it.
    let claimed_at = Instant::now();
    assert!(server.next(&forgetful, 0).await.is_some());
    let other = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.next(&waiting, 20_000).await })
    };
    // A fresh assignment is not requeued: its answer may still be on its way.
    assert_eq!(
        heartbeat(&server, &forgetful, &[]).await["cancel"],
        json!([])
    );
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}")).await["status"],
        "running"
    );
    // r1 keeps beating (so the reaper leaves it alone) without the job.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        heartbeat(&server, &forgetful, &[]).await;
        if other.is_finished() {
            break;
        }
        assert!(
            claimed_at.elapsed() < Duration::from_secs(10),
            "the unlisted job was never requeued"
        );
    }
    assert!(claimed_at.elapsed() >= lost_after, "requeued too early");
    let job = other.await.unwrap().expect("r2 was not handed the job");
    assert_eq!(
        (job["id"].as_i64(), job["attempt"].as_i64()),
        (Some(id), Some(2))
    );
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}")).await["runner_name"],
        "r2"
    );
}

/// The runner's job `id` goes back to the queue (the runner keeps quiet for
/// the runner timeout, as through a network cut) and the same runner claims
/// its second attempt, as a runner with two slots would while the first
/// attempt still runs in the other.
async fn claim_two_attempts(server: &TestServer, runner: &str) -> i64 {
    let first = server.next(runner, 0).await.unwrap();
    assert_eq!(first["attempt"], 1);
    let id = first["id"].as_i64().unwrap();
    let requeued = wait_for_job(server, id, |job| job["status"] == "queued").await;
    assert_eq!(requeued["attempt"], 2);
    let second = server.next(runner, 0).await.unwrap();
    assert_eq!(
        (second["id"].as_i64(), second["attempt"].as_i64()),
        (Some(id), Some(2))
    );
    id
}

async fn heartbeat_attempts(
    server: &TestServer,
    token: &str,
    jobs: &[i64],
    attempts: &[i64],
) -> (StatusCode, Value) {
    post(
        server,
        token,
        "/api/runner/heartbeat",
        json!({ "jobs": jobs, "attempts": attempts }),
    )
    .await
}

#[tokio::test]
async fn an_old_attempt_of_a_job_the_runner_claimed_again_writes_nothing() {
    // Long enough that the second attempt is not requeued during the test.
    let server = TestServer::start_with(Duration::from_secs(2)).await;
    server.add_repo("app").await;
    let (_, runner) = server.register_runner("r1").await;
    let id = server.queue("app").await;
    let logs = |attempt: &str| format!("/api/runner/jobs/{id}/logs{attempt}");
    let steps = |attempt: &str| format!("/api/runner/jobs/{id}/steps{attempt}");
    let finish = |attempt: &str| format!("/api/runner/jobs/{id}/finish{attempt}");
    let step = json!([{ "step": 1, "name": "build", "key": "", "status": "running" }]);

    // Attempt 1 reports before the cut, naming its attempt.
    assert_eq!(server.next(&runner, 0).await.unwrap()["attempt"], 1);
    let (status, _) = post(
        &server,
        &runner,
        &logs("?attempt=1"),
        json!([{ "seq": 0, "stream": "stdout", "data": "first 0\n" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The runner is cut off for longer than the runner timeout; back, it
    // claims the job's second attempt in another slot.
    let requeued = wait_for_job(&server, id, |job| job["status"] == "queued").await;
    assert_eq!(requeued["attempt"], 2);
    assert_eq!(server.next(&runner, 0).await.unwrap()["attempt"], 2);

    // Attempt 1, still running on the runner, reports again: all refused.
    let (status, body) = post(
        &server,
        &runner,
        &logs("?attempt=1"),
        json!([
            { "seq": 0, "stream": "stdout", "data": "first 0\n" },
            { "seq": 1, "stream": "stdout", "data": "first 1\n" }
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("attempt 1"),
        "{body}"
    );
    let (status, _) = post(&server, &runner, &steps("?attempt=1"), step.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &server,
        &runner,
        &finish("?attempt=1"),
        json!({ "status": "failed" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = heartbeat_attempts(&server, &runner, &[id, id], &[1, 2]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancel"], json!([id]));
    assert_eq!(body["cancel_attempts"], json!([1]));

    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_i64()),
        (Some("running"), Some(2))
    );
    assert_eq!(job["steps"], json!([]));
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}/logs")).await,
        json!([])
    );

    // Attempt 2 is written; a post naming no attempt goes to the current one.
    let (status, _) = post(
        &server,
        &runner,
        &logs("?attempt=2"),
        json!([{ "seq": 0, "stream": "stdout", "data": "second 0\n" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        &server,
        &runner,
        &logs(""),
        json!([{ "seq": 1, "stream": "stdout", "data": "second 1\n" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&server, &runner, &steps("?attempt=2"), step).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}/logs")).await,
        json!([
            { "seq": 0, "stream": "stdout", "data": "second 0\n" },
            { "seq": 1, "stream": "stdout", "data": "second 1\n" }
        ])
    );
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["steps"].as_array().unwrap().len(), 1);

    // An attempt that is not a number, attempts that do not match the jobs.
    let (status, body) = post(
        &server,
        &runner,
        &logs("?attempt=two"),
        json!([{ "seq": 2, "stream": "stdout", "data": "x\n" }]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = heartbeat_attempts(&server, &runner, &[id], &[1, 2]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("attempts"),
        "{body}"
    );

    let (status, body) = post(
        &server,
        &runner,
        &finish("?attempt=2"),
        json!({ "status": "succeeded" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = post(
        &server,
        &runner,
        &finish("?attempt=2"),
        json!({ "status": "succeeded" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "finished already");
    let (status, _) = post(
        &server,
        &runner,
        &finish("?attempt=1"),
        json!({ "status": "failed" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not the current attempt");
    assert_eq!(
        server.admin_get(&format!("/api/jobs/{id}")).await["status"],
        "succeeded"
    );
    // A finished job is stopped whichever attempt is listed.
    let (_, body) = heartbeat_attempts(&server, &runner, &[id, id], &[1, 2]).await;
    assert_eq!(body["cancel"], json!([id, id]));
    assert_eq!(body["cancel_attempts"], json!([1, 2]));
}

#[tokio::test]
async fn listing_only_an_old_attempt_requeues_the_current_one() {
    let lost_after = Duration::from_millis(800);
    let server = TestServer::start_with(lost_after).await;
    server.add_repo("app").await;
    let (_, runner) = server.register_runner("r1").await;
    server.queue("app").await;
    let id = claim_two_attempts(&server, &runner).await;
    let claimed_at = Instant::now();

    // The runner lists attempt 1 (whose slot runs on) but not attempt 2,
    // whose `next` answer it lost: attempt 1 is told to stop at every beat,
    // and attempt 2 is requeued once the runner timeout has passed.
    loop {
        let (status, body) = heartbeat_attempts(&server, &runner, &[id], &[1]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["cancel"], json!([id]));
        assert_eq!(body["cancel_attempts"], json!([1]));
        let job = server.admin_get(&format!("/api/jobs/{id}")).await;
        if job["status"] == "queued" {
            assert_eq!(job["attempt"], 3);
            break;
        }
        assert_eq!(job["attempt"], 2);
        assert!(
            claimed_at.elapsed() < Duration::from_secs(10),
            "attempt 2 was never requeued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(claimed_at.elapsed() >= lost_after, "requeued too early");

    // Listed with its own attempt, the current one stays, long after.
    let claimed = server.next(&runner, 0).await.unwrap();
    assert_eq!(claimed["attempt"], 3);
    let deadline = Instant::now() + lost_after * 2;
    while Instant::now() < deadline {
        let (_, body) = heartbeat_attempts(&server, &runner, &[id, id], &[2, 3]).await;
        assert_eq!(body["cancel"], json!([id]));
        assert_eq!(body["cancel_attempts"], json!([2]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_i64()),
        (Some("running"), Some(3))
    );
}
