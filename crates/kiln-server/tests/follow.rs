//! `GET /api/jobs/{id}/logs?follow=true` as server-sent events: chunks arrive
//! as they are appended, in seq order, and the stream ends when the job does.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Opens a follow request and forwards each event, with when it arrived; the
/// channel closes when the server ends the stream.
async fn follow(server: &TestServer, query: &str) -> mpsc::UnboundedReceiver<(Instant, Event)> {
    let mut response = server
        .http
        .get(server.url(query))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (send, receive) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Some(bytes) = response.chunk().await.unwrap() {
            buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    if send.send((Instant::now(), event)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    receive
}

fn parse(block: &str) -> Option<Event> {
    let (mut event, mut id, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event: ") {
            event = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("data: ") {
            data.push_str(value);
        }
        // Lines starting with ':' are keep-alive comments.
    }
    Some(Event {
        event: event?,
        id,
        data: serde_json::from_str(&data).unwrap(),
    })
}

async fn recv(events: &mut mpsc::UnboundedReceiver<(Instant, Event)>) -> (Instant, Event) {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("no event within 10 s")
        .expect("the stream ended early")
}

fn log(seq: i64, data: &str) -> Event {
    Event {
        event: "log".into(),
        id: Some(seq.to_string()),
        data: json!({ "seq": seq, "stream": "stdout", "data": data }),
    }
}

async fn append(server: &TestServer, runner: &str, id: i64, chunks: &[(i64, &str)]) {
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|(seq, data)| json!({ "seq": seq, "stream": "stdout", "data": data }))
        .collect();
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/runner/jobs/{id}/logs"),
            Some(runner),
            Some(json!(chunks)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn finish(server: &TestServer, runner: &str, id: i64, status: &str) {
    let (code, body) = server
        .call(
            Method::POST,
            &format!("/api/runner/jobs/{id}/finish"),
            Some(runner),
            Some(json!({ "status": status })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_followed_log_arrives_in_order_as_it_is_written_and_ends_with_the_job() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, runner) = server.register_runner("r1").await;
    assert!(server.next(&runner, 0).await.is_some());
    append(&server, &runner, id, &[(0, "before\n")]).await;

    let mut events = follow(&server, &format!("/api/jobs/{id}/logs?follow=true")).await;
    assert_eq!(recv(&mut events).await.1, log(0, "before\n"));

    // Each append wakes the follower: far sooner than its 1 s fallback timer.
    let mut delays = Vec::new();
    for seq in 1..=5 {
        let data = format!("line {seq}\n");
        let sent = Instant::now();
        append(&server, &runner, id, &[(seq, &data)]).await;
        let (arrived, event) = recv(&mut events).await;
        assert_eq!(event, log(seq, &data));
        delays.push(arrived - sent);
    }
    delays.sort();
    assert!(
        delays[2] < Duration::from_millis(400),
        "woken late: {delays:?}"
    );

    // Out of order: seq 7 waits for seq 6 rather than leaving a hole.
    append(&server, &runner, id, &[(7, "seven\n")]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(events.try_recv().is_err(), "seq 7 was sent before seq 6");
    append(&server, &runner, id, &[(6, "six\n"), (7, "seven\n")]).await;
    assert_eq!(recv(&mut events).await.1, log(6, "six\n"));
    assert_eq!(recv(&mut events).await.1, log(7, "seven\n"));

    finish(&server, &runner, id, "succeeded").await;
    let (_, end) = recv(&mut events).await;
    assert_eq!(end.event, "end");
    assert_eq!(end.data, json!({ "status": "succeeded" }));
    let closed = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the stream did not end: {closed:?}"
    );

    // Following a finished job gives what is after `after`, then the end.
    let mut again = follow(&server, &format!("/api/jobs/{id}/logs?follow=true&after=5")).await;
    assert_eq!(recv(&mut again).await.1, log(6, "six\n"));
    assert_eq!(recv(&mut again).await.1, log(7, "seven\n"));
    assert_eq!(recv(&mut again).await.1.event, "end");
    assert!(again.recv().await.is_none());

    let (status, _) = server
        .call(
            Method::GET,
            "/api/jobs/999/logs?follow=true",
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_requeued_job_shows_as_a_new_attempt_in_the_stream() {
    // Long enough that r2, once it holds the job, is not taken for lost too.
    let server = TestServer::start_with(Duration::from_millis(2000)).await;
    server.add_repo("app").await;
    let id = server.queue("app").await;
    let (_, first) = server.register_runner("r1").await;
    let (_, second) = server.register_runner("r2").await;
    assert!(server.next(&first, 0).await.is_some());
    append(
        &server,
        &first,
        id,
        &[(0, "a0\n"), (1, "a1\n"), (2, "a2\n")],
    )
    .await;

    let mut events = follow(&server, &format!("/api/jobs/{id}/logs?follow=true&after=1")).await;
    assert_eq!(recv(&mut events).await.1, log(2, "a2\n"));

    // r1 never comes back: the reaper requeues the job as attempt 2.
    let (_, attempt) = recv(&mut events).await;
    assert_eq!(attempt.event, "attempt");
    assert_eq!(attempt.data, json!({ "attempt": 2 }));
    assert_eq!(server.next(&second, 0).await.unwrap()["attempt"], 2);
    append(&server, &second, id, &[(0, "b0\n")]).await;
    assert_eq!(recv(&mut events).await.1, log(0, "b0\n"));
    finish(&server, &second, id, "failed").await;
    let (_, end) = recv(&mut events).await;
    assert_eq!(
        (end.event.as_str(), &end.data),
        ("end", &json!({ "status": "failed" }))
    );
    assert!(events.recv().await.is_none());
}
