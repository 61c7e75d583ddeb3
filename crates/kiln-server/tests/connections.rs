//! What a connection may cost the server: a slow request head, an idle
//! keep-alive connection and a trickled body are cut after their timeouts,
//! answers in progress (a held `next`, a followed log) are not, and
//! connections beyond the cap wait until others close. All over 127.0.0.1,
//! with timeouts of a few hundred milliseconds set through the config.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);
/// How late after its timeout a close may be seen on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A client that keeps no idle connections: every request opens its own, so
/// none is reused just as the server closes it.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A normal request still gets its answer.
async fn still_serves(server: &TestServer) {
    let (status, jobs) = common::call(
        &fresh_client(),
        server.addr,
        Method::GET,
        "/api/jobs",
        Some(&server.admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert!(jobs.is_array(), "{jobs}");
}

/// Reads until the server closes the connection (EOF or reset) or `limit`
/// passes; what it sent, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Reads one response with a `Content-Length` body; its status line.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                let status = head.lines().next().unwrap_or_default().to_owned();
                return Some(status);
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn get_jobs(admin: &str) -> String {
    format!("GET /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n")
}

/// Whether the server closed the connection before `limit`: one byte is
/// written each `every`, and the connection read in between.
async fn trickle_until_closed(
    stream: &mut TcpStream,
    byte: u8,
    every: Duration,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    // Bounded: at most `limit / every` bytes.
    for _ in 0..(limit.as_millis() / every.as_millis()).max(1) {
        if stream.write_all(&[byte]).await.is_err() {
            return (received, true);
        }
        let (more, closed) = read_until_closed(stream, every).await;
        received.extend(more);
        if closed {
            return (received, true);
        }
    }
    (received, false)
}

#[tokio::test]
async fn a_slow_request_head_is_cut_after_the_header_timeout() {
    let server = TestServer::start_configured(|config| {
        config.header_read_timeout = SHORT;
        config.idle_timeout = LONG;
        config.body_read_timeout = LONG;
    })
    .await;

    // A slowloris: a request line and a header, then one header byte each 100 ms.
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, closed) =
        trickle_until_closed(&mut slow, b'a', Duration::from_millis(100), SHORT + SLACK).await;
    let took = started.elapsed();
    assert!(closed, "a slowloris head was still open after {took:?}");
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );

    // A connection that sends nothing at all is cut the same way.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (sent, closed) = read_until_closed(&mut silent, SHORT + SLACK).await;
    let took = started.elapsed();
    assert!(closed, "a silent connection was still open after {took:?}");
    assert!(sent.is_empty());
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );

    // A head sent at once is answered, also well after the first connection.
    let mut prompt = TcpStream::connect(server.addr).await.unwrap();
    prompt
        .write_all(get_jobs(&server.admin).as_bytes())
        .await
        .unwrap();
    let status = read_response(&mut prompt, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("http/1.1 200 ok"));
    still_serves(&server).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_configured(|config| {
        config.header_read_timeout = LONG;
        config.idle_timeout = SHORT;
        config.body_read_timeout = LONG;
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Two requests on one connection: keep-alive works...
    for _ in 0..2 {
        stream
            .write_all(get_jobs(&server.admin).as_bytes())
            .await
            .unwrap();
        let status = read_response(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(status.as_deref(), Some("http/1.1 200 ok"));
    }
    // ...then nothing: the server closes the connection.
    let answered = Instant::now();
    let (sent, closed) = read_until_closed(&mut stream, SHORT + SLACK).await;
    let idle = answered.elapsed();
    assert!(closed, "an idle connection was still open after {idle:?}");
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    assert!(
        idle >= SHORT - Duration::from_millis(100),
        "closed after {idle:?}"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_after_the_body_timeout() {
    let server = TestServer::start_configured(|config| {
        config.header_read_timeout = LONG;
        config.idle_timeout = LONG;
        config.body_read_timeout = SHORT;
    })
    .await;
    // A webhook body announced at 1000 bytes, sent a byte each 100 ms.
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let (sent, closed) =
        trickle_until_closed(&mut stream, b' ', Duration::from_millis(100), SHORT + SLACK).await;
    let took = started.elapsed();
    assert!(
        closed,
        "a trickled body was still being taken after {took:?}"
    );
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
    let answer = String::from_utf8_lossy(&sent);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    still_serves(&server).await;
}

#[tokio::test]
async fn answers_in_progress_outlive_the_idle_and_header_timeouts() {
    let server = TestServer::start_configured(|config| {
        config.header_read_timeout = SHORT;
        config.idle_timeout = SHORT;
        config.body_read_timeout = SHORT;
    })
    .await;
    let http = fresh_client();
    server.add_repo("app").await;
    let (_, runner) = server.register_runner("r1").await;

    // A held `next` that times out answers 204, after five idle timeouts.
    let asked = Instant::now();
    assert_eq!(common::next(&http, server.addr, &runner, 1500).await, None);
    assert!(asked.elapsed() >= Duration::from_millis(1500));

    // A held `next` gets the job queued while it waits.
    let waiting = {
        let (http, addr, runner) = (http.clone(), server.addr, runner.clone());
        tokio::spawn(async move { common::next(&http, addr, &runner, 10_000).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id = server.queue("app").await;
    let claimed = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the held next never answered")
        .unwrap()
        .expect("the held next answered 204");
    assert_eq!(claimed["id"], id);

    // A followed log sends nothing for a second (its keep-alive comments
    // are 15 s apart), then the chunk appended, then its end.
    let mut response = http
        .get(server.url(&format!("/api/jobs/{id}/logs?follow=true")))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = common::call(
        &http,
        server.addr,
        Method::POST,
        &format!("/api/runner/jobs/{id}/logs"),
        Some(&runner),
        Some(json!([{ "seq": 0, "stream": "stdout", "data": "after a quiet second" }])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = common::call(
        &http,
        server.addr,
        Method::POST,
        &format!("/api/runner/jobs/{id}/finish"),
        Some(&runner),
        Some(json!({ "status": "succeeded" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut stream = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(bytes) = response.chunk().await.expect("the stream was cut") {
            stream.push_str(&String::from_utf8_lossy(&bytes));
        }
    })
    .await;
    assert!(read.is_ok(), "the stream did not end: {stream}");
    assert!(stream.contains("after a quiet second"), "{stream}");
    assert!(stream.contains("event: end"), "{stream}");
    still_serves(&server).await;
}

/// Opens a connection and has one request answered on it.
async fn served_connection(addr: SocketAddr, admin: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(get_jobs(admin).as_bytes()).await.unwrap();
    let status = read_response(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("http/1.1 200 ok"));
    stream
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_others_close() {
    const CAP: usize = 4;
    let server = TestServer::start_configured(|config| {
        config.header_read_timeout = LONG;
        config.idle_timeout = LONG;
        config.body_read_timeout = LONG;
        config.max_connections = CAP;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(served_connection(server.addr, &server.admin).await);
    }
    // Two more: the kernel completes the handshake, the server does not serve them.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(get_jobs(&server.admin).as_bytes())
            .await
            .unwrap();
        waiting.push(stream);
    }
    for stream in &mut waiting {
        let (sent, closed) = read_until_closed(stream, Duration::from_millis(500)).await;
        assert!(
            !closed && sent.is_empty(),
            "a connection beyond the cap was served"
        );
    }
    // Each one that closes lets one waiting connection in.
    drop(held.pop());
    let first = read_response(&mut waiting[0], Duration::from_secs(5)).await;
    assert_eq!(first.as_deref(), Some("http/1.1 200 ok"));
    let (sent, _) = read_until_closed(&mut waiting[1], Duration::from_millis(300)).await;
    assert!(
        sent.is_empty(),
        "two connections got in for one that closed"
    );
    drop(held.pop());
    let second = read_response(&mut waiting[1], Duration::from_secs(5)).await;
    assert_eq!(second.as_deref(), Some("http/1.1 200 ok"));

    // The connections still held still work; so does a new one once there is room.
    for stream in &mut held {
        stream
            .write_all(get_jobs(&server.admin).as_bytes())
            .await
            .unwrap();
        let status = read_response(stream, Duration::from_secs(5)).await;
        assert_eq!(status.as_deref(), Some("http/1.1 200 ok"));
    }
    drop(held);
    drop(waiting);
    still_serves(&server).await;
}
