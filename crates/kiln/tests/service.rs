//! `kiln server` and its client commands as users run them: the real binary,
//! a real server process on 127.0.0.1 with its SQLite database in a temp
//! dir. The runner side of the API is played by the test itself (reqwest).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A `kiln server` process.
struct ServerProcess {
    child: Child,
    /// Kept open: the server may still write to stdout.
    _stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    /// What it printed before `listening on`.
    banner: Vec<String>,
    stderr_log: PathBuf,
}

impl ServerProcess {
    fn start(data: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_on(data, "127.0.0.1:0", extra)
    }

    fn start_on(data: &Path, listen: &str, extra: &[&str]) -> ServerProcess {
        let stderr_log = data.with_extension(format!("stderr.{}", unique()));
        let mut child = Command::new(KILN)
            .args(["server", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .env_remove("KILN_SERVER_DATA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = Vec::new();
        let addr = loop {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "kiln server exited before listening: {}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            );
            let line = line.trim_end().to_owned();
            if let Some(addr) = line.strip_prefix("listening on http://") {
                break addr.parse().unwrap();
            }
            banner.push(line);
        };
        ServerProcess {
            child,
            _stdout: stdout,
            addr,
            banner,
            stderr_log,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, as a service manager stops it.
    fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = wait_for_exit(&mut self.child, Duration::from_secs(20));
        status.unwrap_or_else(|| panic!("no exit after SIGTERM: {}", self.stderr()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A server with a fresh data dir and its admin token.
struct Service {
    _dir: tempfile::TempDir,
    data: PathBuf,
    server: Option<ServerProcess>,
    admin: String,
    http: reqwest::Client,
}

impl Service {
    fn start() -> Service {
        Service::start_with(&["--runner-timeout", "60s"])
    }

    fn start_with(extra: &[&str]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server = ServerProcess::start(&data, extra);
        let admin = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Service {
            _dir: dir,
            data,
            server: Some(server),
            admin,
            http: reqwest::Client::new(),
        }
    }

    fn server(&self) -> &ServerProcess {
        self.server.as_ref().unwrap()
    }

    fn url(&self) -> String {
        self.server().url()
    }

    /// A client command with the admin token from the environment.
    fn kiln(&self, args: &[&str]) -> Output {
        self.kiln_with(args, &[("KILN_TOKEN", &self.admin)])
    }

    fn kiln_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = client_command(args);
        command.env("KILN_SERVER", self.url());
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    }

    /// A client command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kiln(args);
        assert!(out.status.success(), "kiln {args:?}: {}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn add_repo(&self, name: &str) {
        let url = format!("https://git.example/{name}.git");
        self.ok(&["repo", "add", name, "--url", &url]);
    }

    fn trigger(&self, args: &[&str]) -> i64 {
        let out = self.ok(&[&["trigger"], args].concat());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "the id alone: {out:?}");
        lines[0].parse().unwrap()
    }

    fn job(&self, id: i64) -> Value {
        self.json(&["jobs", "show", &id.to_string()])
    }

    /// Registers a runner with a registration token made by the CLI; its token.
    async fn runner(&self, name: &str) -> String {
        let registration = self.ok(&["runner-token", "create"]);
        let registration = registration.trim();
        assert_eq!(registration.lines().count(), 1, "the token alone");
        let answer = self
            .http
            .post(format!("{}/api/runners/register", self.url()))
            .bearer_auth(registration)
            .json(&json!({ "name": name, "labels": [] }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        let body: Value = answer.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn runner_post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let answer = self
            .http
            .post(format!("{}{path}", self.url()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Claims the next job as runner `token`; its id.
    async fn claim(&self, token: &str) -> i64 {
        let answer = self
            .http
            .get(format!("{}/api/runner/next?wait_ms=5000", self.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "a job to claim");
        let job: Value = answer.json().await.unwrap();
        job["id"].as_i64().unwrap()
    }

    async fn post_logs(&self, token: &str, id: i64, chunks: &[(i64, &str, &str)]) {
        let chunks: Vec<Value> = chunks
            .iter()
            .map(|(seq, stream, data)| json!({ "seq": seq, "stream": stream, "data": data }))
            .collect();
        let (status, body) = self
            .runner_post(token, &format!("/api/runner/jobs/{id}/logs"), json!(chunks))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn finish(&self, token: &str, id: i64, status: &str) {
        let (code, body) = self
            .runner_post(
                token,
                &format!("/api/runner/jobs/{id}/finish"),
                json!({ "status": status }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
}

/// `kiln ARGS` with none of the service's variables inherited.
fn client_command(args: &[&str]) -> Command {
    let mut command = Command::new(KILN);
    command
        .args(args)
        .env_remove("KILN_SERVER")
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_WEBHOOK_SECRET")
        .stdin(Stdio::null());
    command
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn is_micros_timestamp(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    // 2026-11-30T14:00:00.123456Z
    text.len() == 27
        && text.ends_with('Z')
        && text.as_bytes()[19] == b'.'
        && text[20..26].bytes().all(|b| b.is_ascii_digit())
}

#[test]
fn the_admin_token_is_printed_once_saved_0600_and_sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = ServerProcess::start(&data, &[]);
    assert_ne!(first.addr.port(), 0, "the real port is printed");
    let saved = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let token = saved.trim();
    assert!(token.len() >= 20, "{saved:?}");
    let mode = std::fs::metadata(data.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let banner = first.banner.join("\n");
    assert!(
        first.banner.iter().any(|line| line == token),
        "the token alone on a line: {banner}"
    );
    assert!(
        banner.contains(&data.join("admin.token").display().to_string()),
        "{banner}"
    );
    assert!(
        banner.contains(&format!(
            "export KILN_SERVER=http://{} KILN_TOKEN={token}",
            first.addr
        )),
        "{banner}"
    );
    // The printed address serves the API, and the token works.
    let listed = client_command(&["repo", "ls", "--json"])
        .env("KILN_SERVER", first.url())
        .env("KILN_TOKEN", token)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", show(&listed));
    assert_eq!(
        serde_json::from_slice::<Value>(&listed.stdout).unwrap(),
        json!([])
    );

    let stderr_log = first.stderr_log.clone();
    let status = first.terminate();
    assert!(status.success(), "graceful stop: {status}");
    let log = std::fs::read_to_string(stderr_log).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains(token), "the token is never logged: {log}");

    let second = ServerProcess::start(&data, &[]);
    let banner = second.banner.join("\n");
    assert!(!banner.contains(token), "shown once only: {banner}");
    assert!(!banner.contains("KILN_TOKEN"), "{banner}");
    assert_eq!(
        std::fs::read_to_string(data.join("admin.token")).unwrap(),
        saved,
        "the saved token is kept"
    );
    let listed = client_command(&["repo", "ls"])
        .args(["--server", &second.url(), "--token", token])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", show(&listed));
}

#[test]
fn bad_db_urls_are_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(KILN)
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .args(["--db", "postgres://kiln:hunter2@db.example/kiln"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("PostgreSQL is not supported"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // An SQLite URL elsewhere than the data dir is used.
    let db = dir.path().join("elsewhere.db");
    let url = format!("sqlite://{}", db.display());
    let server = ServerProcess::start(&dir.path().join("data"), &["--db", &url]);
    assert!(db.exists(), "{}", server.stderr());
}

#[test]
fn repos_triggers_and_jobs_from_the_command_line() {
    let service = Service::start();
    let secret_file = service.data.with_extension("secret");
    std::fs::write(&secret_file, "s3cret-value\n").unwrap();
    let secret_arg = secret_file.display().to_string();
    service.ok(&[
        "repo",
        "add",
        "app",
        "--url",
        "https://git.example/app.git",
        "--branch",
        "trunk",
        "--poll",
        "0",
        "--webhook-secret-file",
        &secret_arg,
        "--memory",
        "2g",
        "--job-timeout",
        "20m",
    ]);
    service.add_repo("lib");
    let zero = service.kiln(&["repo", "add", "bad", "--url", "x", "--cpus", "0"]);
    assert!(!zero.status.success(), "{}", show(&zero));
    assert!(stderr(&zero).contains("cpus"), "{}", show(&zero));
    let again = service.kiln(&["repo", "add", "app", "--url", "https://x.example/a.git"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("409"), "{}", show(&again));

    let repos = service.json(&["repo", "ls", "--json"]);
    let app = repos
        .as_array()
        .unwrap()
        .iter()
        .find(|repo| repo["name"] == "app")
        .unwrap();
    assert_eq!(app["branch"], "trunk");
    assert_eq!(app["has_webhook_secret"], true);
    assert_eq!(
        app["limits"],
        json!({"step_memory_bytes": 2u64 << 30, "job_timeout_ms": 1_200_000})
    );
    assert!(!repos.to_string().contains("s3cret"), "{repos}");
    let table = service.ok(&["repo", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == [
                    "app",
                    "https://git.example/app.git",
                    "trunk",
                    "off",
                    "yes",
                    "memory",
                    "2g,",
                    "job",
                    "20m"
                ]),
        "{table}"
    );
    assert!(!table.contains("s3cret"));

    let plain = service.trigger(&["app"]);
    let pinned = service.trigger(&[
        "app",
        "--ref",
        "feature",
        "--commit",
        "0123456789abcdef0123456789abcdef01234567",
    ]);
    assert!(pinned > plain);
    let missing = service.kiln(&["trigger", "nope"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("404"), "{}", show(&missing));

    let job = service.job(pinned);
    assert_eq!(job["id"], pinned);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["repo"], "app");
    assert_eq!(job["git_ref"], "feature");
    assert_eq!(job["commit"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(job["runner"], Value::Null);
    assert!(is_micros_timestamp(&job["queued_at"]), "{job}");
    assert_eq!(job["started_at"], Value::Null);
    assert_eq!(job["finished_at"], Value::Null);
    assert!(job["steps"].is_array(), "{job}");
    assert_eq!(service.job(plain)["git_ref"], "trunk", "the repo's branch");

    let listed = service.json(&["jobs", "ls", "--json"]);
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [pinned, plain], "newest first");
    let table = service.ok(&["jobs", "ls"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["ID", "STATUS", "REPO", "REF", "COMMIT", "RUNNER", "QUEUED", "DURATION"]
    );
    assert_eq!(
        lines[1][..6],
        [
            pinned.to_string().as_str(),
            "queued",
            "app",
            "feature",
            "0123456789ab",
            "-"
        ]
    );
    assert_eq!(lines[1].last(), Some(&"-"), "not started: {table}");

    // Cancel a queued job; a second cancel is refused.
    let cancelled = service.kiln(&["jobs", "cancel", &plain.to_string()]);
    assert!(cancelled.status.success(), "{}", show(&cancelled));
    assert_eq!(service.job(plain)["status"], "cancelled");
    assert!(is_micros_timestamp(&service.job(plain)["finished_at"]));
    let twice = service.kiln(&["jobs", "cancel", &plain.to_string()]);
    assert!(!twice.status.success());
    assert!(stderr(&twice).contains("409"), "{}", show(&twice));

    // Retry makes a new queued job of the same repo and ref.
    let retry = service.ok(&["jobs", "retry", &plain.to_string()]);
    let retried: i64 = retry.trim().parse().unwrap();
    assert!(retried > pinned);
    let job = service.job(retried);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["repo"], "app");
    assert_eq!(job["git_ref"], "trunk");
    let unfinished = service.kiln(&["jobs", "retry", &pinned.to_string()]);
    assert!(!unfinished.status.success());
    assert!(stderr(&unfinished).contains("409"), "{}", show(&unfinished));
}

#[tokio::test]
async fn runner_token_create_prints_a_token_that_registers_a_runner() {
    let service = Service::start();
    let runner = service.runner("r1").await;
    service.add_repo("app");
    let id = service.trigger(&["app"]);
    assert_eq!(service.claim(&runner).await, id);
    let job = service.job(id);
    assert_eq!(job["status"], "running");
    assert!(job["runner"].is_i64(), "{job}");
    assert!(is_micros_timestamp(&job["started_at"]), "{job}");
    let table = service.ok(&["jobs", "ls"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1], "running");
    assert_ne!(row[5], "-", "the runner is shown: {table}");
}

#[test]
fn client_errors_say_what_is_wrong() {
    let service = Service::start();

    let no_token = service.kiln_with(&["jobs", "ls"], &[]);
    assert!(!no_token.status.success());
    let err = stderr(&no_token);
    assert!(
        err.contains("KILN_TOKEN") && err.contains("admin.token"),
        "{err}"
    );

    let wrong = service.kiln_with(&["jobs", "ls"], &[("KILN_TOKEN", "not-the-token-42")]);
    assert!(!wrong.status.success());
    let err = stderr(&wrong);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    assert!(
        !err.contains("not-the-token-42"),
        "the token is not echoed: {err}"
    );
    let wrong_flag = service.kiln_with(&["trigger", "app", "--token", "not-the-token-42"], &[]);
    assert!(!wrong_flag.status.success());
    assert!(stderr(&wrong_flag).contains("401"), "{}", show(&wrong_flag));

    let unknown = service.kiln(&["jobs", "show", "999"]);
    assert!(!unknown.status.success());
    let err = stderr(&unknown);
    assert!(
        err.contains("404") && err.contains("job 999 not found"),
        "{err}"
    );

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let down = client_command(&["jobs", "ls", "--server", &url])
        .env("KILN_TOKEN", &service.admin)
        .output()
        .unwrap();
    assert!(!down.status.success());
    let err = stderr(&down);
    assert!(
        err.contains("cannot connect") && err.contains(&url),
        "{err}"
    );

    let help = client_command(&["jobs", "ls", "--help"])
        .env("KILN_TOKEN", &service.admin)
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains(&service.admin),
        "--help does not show the token from the environment"
    );
}

#[test]
fn queued_jobs_survive_sigkill() {
    let mut service = Service::start();
    service.add_repo("app");
    let ids: Vec<i64> = (0..3).map(|_| service.trigger(&["app"])).collect();
    let before = service.json(&["jobs", "ls", "--json"]);

    service.server.take().unwrap().kill();
    service.server = Some(ServerProcess::start(&service.data, &[]));
    assert!(
        service.server().banner.is_empty(),
        "no new admin token: {:?}",
        service.server().banner
    );

    let after = service.json(&["jobs", "ls", "--json"]);
    assert_eq!(after, before);
    for id in ids {
        assert_eq!(service.job(id)["status"], "queued");
    }
    // Still a working queue.
    let next = service.trigger(&["app"]);
    assert_eq!(service.job(next)["status"], "queued");
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn webhooks_need_the_right_signature() {
    let service = Service::start();
    let added = service.kiln_with(
        &[
            "repo",
            "add",
            "app",
            "--url",
            "https://git.example/org/app.git",
        ],
        &[
            ("KILN_TOKEN", &service.admin),
            ("KILN_WEBHOOK_SECRET", "hook-secret"),
        ],
    );
    assert!(added.status.success(), "{}", show(&added));
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": commit,
        "repository": {"name": "app", "clone_url": "https://git.example/org/app.git"},
    }))
    .unwrap();
    let hook = |signature: Option<String>| {
        let mut request = service
            .http
            .post(format!("{}/hooks/github", service.url()))
            .header("X-GitHub-Event", "push")
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        request.send()
    };

    let bad = hook(Some(sign("wrong-secret", &body))).await.unwrap();
    assert_eq!(bad.status(), 401);
    let unsigned = hook(None).await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        service.json(&["jobs", "ls", "--json"]),
        json!([]),
        "nothing queued"
    );

    let good = hook(Some(sign("hook-secret", &body))).await.unwrap();
    assert_eq!(good.status(), 201);
    let id = good.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let table = service.ok(&["jobs", "ls"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [
            id.to_string().as_str(),
            "queued",
            "app",
            "main",
            &commit[..12]
        ],
        "{table}"
    );
}

/// `kiln jobs logs ID --follow` in the background.
fn follow(service: &Service, id: i64) -> Child {
    client_command(&["jobs", "logs", &id.to_string(), "--follow"])
        .env("KILN_SERVER", service.url())
        .env("KILN_TOKEN", &service.admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish_follow(mut child: Child) -> Output {
    let status = wait_for_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(status.is_some(), "follow did not end: {}", show(&out));
    out
}

#[tokio::test]
async fn follow_prints_every_chunk_in_order_and_exits_with_the_job_status() {
    let service = Service::start();
    service.add_repo("app");
    let runner = service.runner("r1").await;

    let id = service.trigger(&["app"]);
    assert_eq!(service.claim(&runner).await, id);
    // Some output before the follower starts, some while it follows.
    service
        .post_logs(
            &runner,
            id,
            &[(0, "system", "step 1: build"), (1, "stdout", "one\n")],
        )
        .await;
    let follower = follow(&service, id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    service
        .post_logs(
            &runner,
            id,
            &[(2, "stderr", "two (stderr)\n"), (3, "stdout", "thr")],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A re-sent chunk is ignored by the server and printed once.
    service
        .post_logs(&runner, id, &[(3, "stdout", "thr"), (4, "stdout", "ee\n")])
        .await;
    let still = follow(&service, id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    service
        .post_logs(
            &runner,
            id,
            &[(5, "system", "step 1: done\n"), (6, "stdout", "four\n")],
        )
        .await;
    service.finish(&runner, id, "succeeded").await;

    for out in [finish_follow(follower), finish_follow(still)] {
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert_eq!(
            String::from_utf8(out.stdout.clone()).unwrap(),
            "one\ntwo (stderr)\nthree\nfour\n",
            "{}",
            show(&out)
        );
        let err = stderr(&out);
        let build = err
            .find("step 1: build\n")
            .unwrap_or_else(|| panic!("{err}"));
        let done = err
            .find("step 1: done\n")
            .unwrap_or_else(|| panic!("{err}"));
        assert!(build < done, "{err}");
    }
    // The stored log prints the same; following a finished job ends at once.
    let stored = service.kiln(&["jobs", "logs", &id.to_string()]);
    assert!(stored.status.success(), "{}", show(&stored));
    assert_eq!(stored.stdout, b"one\ntwo (stderr)\nthree\nfour\n");
    let late = finish_follow(follow(&service, id));
    assert_eq!(late.status.code(), Some(0), "{}", show(&late));
    assert_eq!(late.stdout, b"one\ntwo (stderr)\nthree\nfour\n");

    // A failed job: exit 1.
    let failing = service.trigger(&["app"]);
    assert_eq!(service.claim(&runner).await, failing);
    let follower = follow(&service, failing);
    service
        .post_logs(&runner, failing, &[(0, "stderr", "boom\n")])
        .await;
    service.finish(&runner, failing, "failed").await;
    let out = finish_follow(follower);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(out.stdout, b"boom\n");

    // A job cancelled while it runs: exit 1.
    let cancelled = service.trigger(&["app"]);
    assert_eq!(service.claim(&runner).await, cancelled);
    let follower = follow(&service, cancelled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.ok(&["jobs", "cancel", &cancelled.to_string()]);
    let out = finish_follow(follower);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

#[tokio::test]
async fn follow_resumes_after_the_server_restarts_without_repeating_a_chunk() {
    let mut service = Service::start();
    service.add_repo("app");
    let runner = service.runner("r1").await;
    let id = service.trigger(&["app"]);
    assert_eq!(service.claim(&runner).await, id);
    service
        .post_logs(
            &runner,
            id,
            &[(0, "stdout", "before\n"), (1, "stdout", "crash\n")],
        )
        .await;
    let follower = follow(&service, id);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Killed hard, back on the same port.
    let listen = service.server().addr.to_string();
    service.server.take().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.server = Some(ServerProcess::start_on(
        &service.data,
        &listen,
        &["--runner-timeout", "60s"],
    ));
    service
        .post_logs(&runner, id, &[(2, "stdout", "after\n")])
        .await;
    service.finish(&runner, id, "succeeded").await;

    let out = finish_follow(follower);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        "before\ncrash\nafter\n",
        "{}",
        show(&out)
    );
    assert!(stderr(&out).contains("reconnect"), "{}", show(&out));
}

#[test]
fn api_tokens_are_made_and_revoked_from_the_command_line() {
    let service = Service::start();
    let api_token = service.ok(&["token", "create"]).trim().to_owned();
    assert!(!api_token.is_empty());
    let listed = service.kiln_with(&["jobs", "ls"], &[("KILN_TOKEN", &api_token)]);
    assert!(listed.status.success(), "{}", show(&listed));
    // An API token cannot make API tokens: only the admin can.
    let escalate = service.kiln_with(&["token", "create"], &[("KILN_TOKEN", &api_token)]);
    assert!(!escalate.status.success());
    assert!(stderr(&escalate).contains("401"), "{}", show(&escalate));

    let revoke = |token: &str| {
        let mut child = client_command(&["token", "revoke"])
            .env("KILN_SERVER", service.url())
            .env("KILN_TOKEN", &service.admin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            format!("{token}\n").as_bytes(),
        )
        .unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let revoked = revoke(&api_token);
    assert!(revoked.status.success(), "{}", show(&revoked));
    assert!(
        !String::from_utf8_lossy(&revoked.stderr).contains(&api_token),
        "the token is not echoed"
    );
    let refused = service.kiln_with(&["jobs", "ls"], &[("KILN_TOKEN", &api_token)]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("401"), "{}", show(&refused));
    // Revoking again: nothing live has that value.
    let again = revoke(&api_token);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("404"), "{}", show(&again));

    let registration = service
        .ok(&["token", "create", "--kind", "runner-registration"])
        .trim()
        .to_owned();
    assert!(revoke(&registration).status.success());
    let empty = revoke("");
    assert!(!empty.status.success());
    assert!(
        stderr(&empty).contains("standard input"),
        "{}",
        show(&empty)
    );
}
