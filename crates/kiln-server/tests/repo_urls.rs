//! What a repository may be: names that cannot read as options or hidden
//! files, network URLs for every admin or API token, local paths only for
//! the admin token or under a configured root, and nothing git would take
//! for an option (urls, hosts, branches, refs) from anyone.

mod common;

use common::{post_hook, push_payload, sign, snapshot, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn api_token(server: &TestServer) -> String {
    server.admin_post("/api/api-tokens", json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn add(server: &TestServer, token: &str, body: Value) -> (StatusCode, String) {
    let (status, answer) = server
        .call(Method::POST, "/api/repos", Some(token), Some(body))
        .await;
    let message = answer["error"].as_str().unwrap_or_default().to_owned();
    (status, message)
}

#[tokio::test]
async fn repo_names_may_not_start_with_a_dash_or_a_dot() {
    let server = TestServer::start().await;
    let before = snapshot(server.dir.path());
    for name in ["-rf", "--upload-pack=x", ".hidden", "..", "-"] {
        let (status, message) = add(
            &server,
            &server.admin,
            json!({ "name": name, "url": "https://git.example.test/a.git" }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {message}");
        assert!(message.contains(&format!("{name:?}")), "{message}");
        assert!(
            message.contains("not start with '-' or '.'"),
            "{name}: {message}"
        );
    }
    assert_eq!(
        snapshot(server.dir.path()),
        before,
        "a refused name was stored"
    );
    // A dash or a dot inside a name is fine.
    let (status, message) = add(
        &server,
        &server.admin,
        json!({ "name": "my-app.v2", "url": "https://git.example.test/a.git" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
}

#[tokio::test]
async fn local_repositories_need_the_admin_token() {
    let server = TestServer::start().await;
    let api = api_token(&server).await;
    let local = [
        "/srv/git/app",
        "file:///srv/git/app",
        "FILE:///srv/git/app",
        "file://localhost/srv/git/app",
        "relative/app",
        "./app",
        "~/app",
        "ext::sh -c touch% /tmp/pwned",
        "fd::3",
        "ftp://example.test/app.git",
    ];
    let before = snapshot(server.dir.path());
    for (index, url) in local.iter().enumerate() {
        let name = format!("local{index}");
        let (status, message) = add(&server, &api, json!({ "name": name, "url": url })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}: {message}");
        assert!(message.contains(&format!("{name:?}")), "{message}");
        assert!(message.contains("admin token"), "{message}");
        assert!(message.contains("--allow-local-repos"), "{message}");
    }
    assert_eq!(
        snapshot(server.dir.path()),
        before,
        "a refused repo was stored"
    );

    // Network URLs are any token's to add.
    let network = [
        "https://git.example.test/someone/app.git",
        "http://git.example.test/app.git",
        "ssh://git@git.example.test/app.git",
        "ssh://git.example.test:2222/app.git",
        "git://git.example.test/app.git",
        "git@git.example.test:someone/app.git",
        "git.example.test:someone/app.git",
    ];
    for (index, url) in network.iter().enumerate() {
        let (status, message) = add(
            &server,
            &api,
            json!({ "name": format!("net{index}"), "url": url }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {message}");
    }
    // The admin token may add any local repository.
    for (index, url) in local.iter().enumerate() {
        let (status, message) = add(
            &server,
            &server.admin,
            json!({ "name": format!("local{index}"), "url": url }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {message}");
    }
}

#[tokio::test]
async fn api_tokens_may_add_local_repositories_under_an_allowed_root() {
    let roots = tempfile::tempdir().unwrap();
    let allowed = roots.path().join("allowed");
    let server = TestServer::start_configured(|config| {
        config.local_repo_roots = vec![allowed.clone()];
    })
    .await;
    let api = api_token(&server).await;
    let root = allowed.display().to_string();
    for (index, url) in [
        format!("{root}/app"),
        format!("{root}/team/app.git"),
        format!("file://{root}/lib"),
        root.clone(),
    ]
    .iter()
    .enumerate()
    {
        let (status, message) = add(
            &server,
            &api,
            json!({ "name": format!("in{index}"), "url": url }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{url}: {message}");
    }
    for (index, url) in [
        format!("{root}/../escape"),
        format!("{root}/app/../../escape"),
        format!("{root}-sibling/app"),
        format!("file://{root}/%2e%2e/escape"),
        format!("file://otherhost{root}/app"),
        "/etc".to_owned(),
        "allowed/app".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let (status, message) = add(
            &server,
            &api,
            json!({ "name": format!("out{index}"), "url": url }),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}: {message}");
        assert!(message.contains("--allow-local-repos"), "{message}");
    }
}

#[tokio::test]
async fn nothing_git_would_read_as_an_option_is_taken_from_anyone() {
    let server = TestServer::start().await;
    for url in [
        "--upload-pack=touch /tmp/pwned",
        "-u",
        "ssh://-oProxyCommand=touch%20/tmp/pwned/app.git",
        "ssh://git@-oProxyCommand=x/app.git",
        "git@-oProxyCommand=x:app.git",
        "https://git.example.test/app.git\nhttps://other.test/",
    ] {
        let (status, message) =
            add(&server, &server.admin, json!({ "name": "app", "url": url })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url:?}: {message}");
        assert!(message.contains("\"app\""), "{message}");
    }
    let (status, message) = add(
        &server,
        &server.admin,
        json!({ "name": "app", "url": "https://git.example.test/app.git", "branch": "-x" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");

    // Triggered refs.
    server
        .admin_post(
            "/api/repos",
            json!({
                "name": "app",
                "url": "https://git.example.test/app.git",
                "webhook_secret": "hook-secret",
            }),
        )
        .await;
    let before = snapshot(server.dir.path());
    for git_ref in [
        "--upload-pack=touch /tmp/pwned",
        "-b",
        "",
        "main branch",
        "a\nb",
    ] {
        let (status, answer) = server
            .call(
                Method::POST,
                "/api/repos/app/jobs",
                Some(&server.admin),
                Some(json!({ "git_ref": git_ref })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{git_ref:?}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains("git_ref"), "{message}");
    }
    // Pushed branches.
    let payload = push_payload(
        "app",
        "https://git.example.test/app.git",
        "--upload-pack=x",
        "1111111111111111111111111111111111111111",
    );
    let body = serde_json::to_vec(&payload).unwrap();
    let (status, answer) = post_hook(
        &server.http,
        server.addr,
        "X-GitHub-Event",
        "push",
        &body,
        Some(&sign("hook-secret", &body)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        snapshot(server.dir.path()),
        before,
        "a refused ref was queued"
    );

    // Ordinary refs still queue.
    for git_ref in ["main", "refs/heads/release-1.2", "v1.0", "feature/x"] {
        let (status, answer) = server
            .call(
                Method::POST,
                "/api/repos/app/jobs",
                Some(&server.admin),
                Some(json!({ "git_ref": git_ref })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{git_ref:?}: {answer}");
    }
}
