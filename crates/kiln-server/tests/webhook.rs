//! `POST /hooks/github`: signed pushes from GitHub, Gitea and Forgejo queue
//! jobs; anything unsigned, badly signed or for a repo without a secret is
//! refused and queues nothing.

mod common;

use common::{post_hook, push_payload, sign, snapshot, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "It's a Secret to Everybody";
const CLONE_URL: &str = "https://forge.example.test/someone/app.git";
const COMMIT: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

async fn server_with_repos() -> TestServer {
    let server = TestServer::start().await;
    server
        .admin_post(
            "/api/repos",
            json!({ "name": "app", "url": CLONE_URL, "webhook_secret": SECRET }),
        )
        .await;
    server
        .admin_post(
            "/api/repos",
            json!({ "name": "open", "url": "https://forge.example.test/someone/open.git" }),
        )
        .await;
    server
}

async fn hook(
    server: &TestServer,
    header: &str,
    event: &str,
    payload: &Value,
    secret: Option<&str>,
) -> (StatusCode, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let signature = secret.map(|secret| sign(secret, &body));
    post_hook(
        &server.http,
        server.addr,
        header,
        event,
        &body,
        signature.as_deref(),
        None,
    )
    .await
}

#[tokio::test]
async fn a_signed_github_push_queues_a_job_for_its_branch_and_commit() {
    let server = server_with_repos().await;
    let payload = push_payload("app", CLONE_URL, "feature/x", COMMIT);
    let (status, body) = hook(&server, "X-GitHub-Event", "push", &payload, Some(SECRET)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    let job = server.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["repo"], "app");
    assert_eq!(job["git_ref"], "feature/x");
    assert_eq!(job["commit"], COMMIT);
    assert_eq!(job["status"], "queued");

    // The runner gets what the push named.
    let (_, runner) = server.register_runner("r1").await;
    let claimed = server.next(&runner, 0).await.unwrap();
    assert_eq!(
        (claimed["id"].as_i64(), &claimed["url"]),
        (Some(id), &json!(CLONE_URL))
    );
}

#[tokio::test]
async fn gitea_and_forgejo_headers_work_and_repos_match_by_url_or_name() {
    let server = server_with_repos().await;
    // Matched by html_url (another clone url), from Gitea.
    let mut payload = push_payload("renamed", "https://elsewhere.test/x.git", "main", COMMIT);
    payload["repository"]["html_url"] = json!(CLONE_URL);
    let (status, body) = hook(&server, "X-Gitea-Event", "push", &payload, Some(SECRET)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Matched by name only, from Forgejo.
    let payload = push_payload("app", "https://mirror.test/app.git", "dev", COMMIT);
    let (status, body) = hook(&server, "X-Forgejo-Event", "push", &payload, Some(SECRET)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let jobs = server.admin_get("/api/jobs").await;
    let refs: Vec<_> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|job| (job["repo"].clone(), job["git_ref"].clone()))
        .collect();
    assert_eq!(
        refs,
        [(json!("app"), json!("dev")), (json!("app"), json!("main"))]
    );
}

#[tokio::test]
async fn bad_or_missing_signatures_and_repos_without_a_secret_queue_nothing() {
    let server = server_with_repos().await;
    let payload = push_payload("app", CLONE_URL, "main", COMMIT);
    let before = snapshot(server.dir.path());

    let (status, body) = hook(&server, "X-GitHub-Event", "push", &payload, Some("guess")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not match"),
        "{body}"
    );
    assert!(!body.to_string().contains(SECRET));

    let (status, body) = hook(&server, "X-GitHub-Event", "push", &payload, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("X-Hub-Signature-256"));

    // A signature over other bytes than those sent.
    let body = serde_json::to_vec(&payload).unwrap();
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let (status, _) = post_hook(
        &server.http,
        server.addr,
        "X-GitHub-Event",
        "push",
        &tampered,
        Some(&sign(SECRET, &body)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A repo without a secret takes no webhooks, whatever is signed.
    let open = push_payload(
        "open",
        "https://forge.example.test/someone/open.git",
        "main",
        COMMIT,
    );
    for secret in [None, Some(""), Some(SECRET)] {
        let (status, body) = hook(&server, "X-GitHub-Event", "push", &open, secret).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no webhook secret"),
            "{body}"
        );
    }

    assert_eq!(
        snapshot(server.dir.path()),
        before,
        "a refused webhook changed state"
    );
    assert_eq!(server.admin_get("/api/jobs").await, json!([]));
}

#[tokio::test]
async fn pings_deletions_tags_and_unknown_repos_queue_nothing() {
    let server = server_with_repos().await;
    let ping = json!({
        "zen": "Keep it logically awesome.",
        "hook_id": 1,
        "repository": { "name": "app", "clone_url": CLONE_URL },
    });
    let (status, body) = hook(&server, "X-GitHub-Event", "ping", &ping, Some(SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A ping is checked like any delivery.
    let (status, _) = hook(&server, "X-GitHub-Event", "ping", &ping, Some("guess")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut deletion = push_payload(
        "app",
        CLONE_URL,
        "old",
        "0000000000000000000000000000000000000000",
    );
    deletion["deleted"] = json!(true);
    let (status, body) = hook(&server, "X-GitHub-Event", "push", &deletion, Some(SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["ignored"].is_string(), "{body}");
    // Gitea does not send `deleted`; the zero commit alone says it.
    deletion.as_object_mut().unwrap().remove("deleted");
    let (status, body) = hook(&server, "X-Gitea-Event", "push", &deletion, Some(SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["ignored"].is_string(), "{body}");

    let mut tag = push_payload("app", CLONE_URL, "x", COMMIT);
    tag["ref"] = json!("refs/tags/v1.0.0");
    let (status, body) = hook(&server, "X-GitHub-Event", "push", &tag, Some(SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["ignored"].is_string(), "{body}");

    let (status, body) = hook(&server, "X-GitHub-Event", "issues", &ping, Some(SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["ignored"].is_string(), "{body}");

    let ghost = push_payload(
        "ghost",
        "https://forge.example.test/someone/ghost.git",
        "main",
        COMMIT,
    );
    let (status, _) = hook(&server, "X-GitHub-Event", "push", &ghost, Some(SECRET)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = post_hook(
        &server.http,
        server.addr,
        "X-Unknown-Event",
        "push",
        b"{}",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // More than 1 MiB is refused before anything is read from it.
    let mut huge = push_payload("app", CLONE_URL, "main", COMMIT);
    huge["padding"] = json!("x".repeat(1024 * 1024));
    let (status, _) = hook(&server, "X-GitHub-Event", "push", &huge, Some(SECRET)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(server.admin_get("/api/jobs").await, json!([]));
}
