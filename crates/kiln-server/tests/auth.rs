//! Every endpoint refuses a missing, wrong, revoked or wrong-kind token with
//! 401 and changes nothing; the same requests with the right token succeed.

mod common;

use common::{post_hook, push_payload, sign, snapshot, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Needs {
    Admin,
    AdminOnly,
    Registration,
    Runner,
}

struct Endpoint {
    method: Method,
    path: String,
    body: Option<Value>,
    needs: Needs,
    /// What the right token gets.
    ok: StatusCode,
}

fn endpoint(method: Method, path: String, body: Option<Value>, needs: Needs, ok: u16) -> Endpoint {
    Endpoint {
        method,
        path,
        body,
        needs,
        ok: StatusCode::from_u16(ok).unwrap(),
    }
}

#[tokio::test]
async fn every_endpoint_refuses_bad_tokens_and_changes_nothing() {
    let server = TestServer::start().await;
    server.add_repo("app").await;
    server
        .admin_post(
            "/api/repos",
            json!({
                "name": "hooked",
                "url": "https://forge.example.test/someone/hooked.git",
                "webhook_secret": "hook-secret",
            }),
        )
        .await;
    let running = server.queue("app").await;
    let finished = server.queue("app").await;
    let queued = server.queue("app").await;
    let (_runner_id, runner) = server.register_runner("r1").await;
    assert_eq!(server.next(&runner, 0).await.unwrap()["id"], running);
    assert_eq!(server.next(&runner, 0).await.unwrap()["id"], finished);
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/api/runner/jobs/{finished}/finish"),
            Some(&runner),
            Some(json!({ "status": "succeeded" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The right kinds, then revoked ones of each kind.
    let api = server.admin_post("/api/api-tokens", json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let registration = server.admin_post("/api/runner-tokens", json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked_api = server.admin_post("/api/api-tokens", json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked_registration = server.admin_post("/api/runner-tokens", json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, revoked_runner) = server.register_runner("r2").await;
    for token in [&revoked_api, &revoked_registration, &revoked_runner] {
        server
            .admin_post("/api/tokens/revoke", json!({ "token": token }))
            .await;
    }

    let endpoints = vec![
        endpoint(
            Method::POST,
            "/api/repos".into(),
            Some(json!({ "name": "other", "url": "https://x.test/o.git" })),
            Needs::Admin,
            201,
        ),
        endpoint(Method::GET, "/api/repos".into(), None, Needs::Admin, 200),
        endpoint(
            Method::POST,
            "/api/repos/app/jobs".into(),
            Some(json!({})),
            Needs::Admin,
            201,
        ),
        endpoint(Method::GET, "/api/jobs".into(), None, Needs::Admin, 200),
        endpoint(
            Method::GET,
            format!("/api/jobs/{running}"),
            None,
            Needs::Admin,
            200,
        ),
        endpoint(
            Method::GET,
            format!("/api/jobs/{running}/logs"),
            None,
            Needs::Admin,
            200,
        ),
        // A finished job's stream ends, so the right token's answer can be read whole.
        endpoint(
            Method::GET,
            format!("/api/jobs/{finished}/logs?follow=true&after=-1"),
            None,
            Needs::Admin,
            200,
        ),
        endpoint(
            Method::POST,
            format!("/api/jobs/{finished}/retry"),
            None,
            Needs::Admin,
            201,
        ),
        endpoint(
            Method::POST,
            "/api/runner-tokens".into(),
            None,
            Needs::Admin,
            201,
        ),
        endpoint(
            Method::POST,
            "/api/api-tokens".into(),
            None,
            Needs::AdminOnly,
            201,
        ),
        endpoint(
            Method::POST,
            "/api/runners/register".into(),
            Some(json!({ "name": "r3", "labels": [] })),
            Needs::Registration,
            201,
        ),
        endpoint(
            Method::POST,
            "/api/runner/heartbeat".into(),
            Some(json!({ "jobs": [running] })),
            Needs::Runner,
            200,
        ),
        endpoint(
            Method::POST,
            format!("/api/runner/jobs/{running}/steps"),
            Some(json!([{
                "step": 1, "name": "go test", "key": "blake3:00",
                "status": "running", "cached": false, "duration_ms": null
            }])),
            Needs::Runner,
            200,
        ),
        endpoint(
            Method::POST,
            format!("/api/runner/jobs/{running}/logs"),
            Some(json!([{ "seq": 0, "stream": "stdout", "data": "hello\n" }])),
            Needs::Runner,
            200,
        ),
        endpoint(
            Method::POST,
            format!("/api/runner/jobs/{running}/finish"),
            Some(json!({ "status": "failed" })),
            Needs::Runner,
            200,
        ),
        endpoint(
            Method::GET,
            "/api/runner/next?wait_ms=0".into(),
            None,
            Needs::Runner,
            200,
        ),
        // Last among the admin ones that change state, so the others still find their jobs.
        endpoint(
            Method::POST,
            format!("/api/jobs/{queued}/cancel"),
            None,
            Needs::Admin,
            200,
        ),
        endpoint(
            Method::POST,
            "/api/tokens/revoke".into(),
            Some(json!({ "token": api })),
            Needs::Admin,
            200,
        ),
    ];

    let garbage = "kiln_admin_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
    let before = snapshot(server.dir.path());
    for endpoint in &endpoints {
        let (revoked, wrong_kinds): (&str, Vec<&str>) = match endpoint.needs {
            Needs::Admin => (&revoked_api, vec![&runner, &registration]),
            Needs::AdminOnly => (&revoked_api, vec![&api, &runner, &registration]),
            Needs::Registration => (&revoked_registration, vec![&server.admin, &runner]),
            Needs::Runner => (&revoked_runner, vec![&server.admin, &registration]),
        };
        let mut attempts: Vec<(&str, Option<&str>)> = vec![
            ("missing", None),
            ("wrong", Some(&garbage)),
            ("empty", Some("")),
            ("revoked", Some(revoked)),
        ];
        attempts.extend(
            wrong_kinds
                .into_iter()
                .map(|token| ("wrong kind", Some(token))),
        );
        for (what, token) in attempts {
            let (status, body) = server
                .call(
                    endpoint.method.clone(),
                    &endpoint.path,
                    token,
                    endpoint.body.clone(),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {} with a {what} token: {body}",
                endpoint.method,
                endpoint.path
            );
            let text = body.to_string();
            assert!(
                token.is_none_or(|token| token.is_empty() || !text.contains(token)),
                "the token came back in the error: {text}"
            );
        }
    }
    // A raw header that is not a bearer token at all.
    let response = server
        .http
        .get(server.url("/api/jobs"))
        .header("Authorization", format!("Basic {}", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The webhook takes a signature, not a token: an admin token without a
    // good signature is refused like anything else.
    let hook = serde_json::to_vec(&push_payload(
        "hooked",
        "https://forge.example.test/someone/hooked.git",
        "main",
        "89abcdef89abcdef89abcdef89abcdef89abcdef",
    ))
    .unwrap();
    let wrong = sign("not-the-secret", &hook);
    for signature in [None, Some(wrong.as_str())] {
        let (status, body) = post_hook(
            &server.http,
            server.addr,
            "X-GitHub-Event",
            "push",
            &hook,
            signature,
            Some(&server.admin),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(!body.to_string().contains("hook-secret"));
    }
    assert_eq!(
        snapshot(server.dir.path()),
        before,
        "a refused request changed state"
    );

    // The same requests with the right token do what they say, so the 401s above
    // were about the token and nothing else.
    for endpoint in &endpoints {
        let token: &str = match endpoint.needs {
            Needs::Admin => &api,
            Needs::AdminOnly => &server.admin,
            Needs::Registration => &registration,
            Needs::Runner => &runner,
        };
        let (status, body) = server
            .call(
                endpoint.method.clone(),
                &endpoint.path,
                Some(token),
                endpoint.body.clone(),
            )
            .await;
        assert_eq!(
            status, endpoint.ok,
            "{} {} with the right token: {body}",
            endpoint.method, endpoint.path
        );
    }
    let (status, body) = post_hook(
        &server.http,
        server.addr,
        "X-GitHub-Event",
        "push",
        &hook,
        Some(&sign("hook-secret", &hook)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "the signed webhook: {body}");
    assert_ne!(snapshot(server.dir.path()), before);
    // The API token revoked by the last request no longer works.
    let (status, _) = server
        .call(Method::GET, "/api/jobs", Some(&api), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
