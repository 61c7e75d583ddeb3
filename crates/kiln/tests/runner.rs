//! `kiln runner` against a real server: a kiln_server::Server in this
//! process (on its own runtime, so it can be stopped outright and started
//! again on the same port and data), real git repositories in temp dirs,
//! the real `kiln` binary as the runner, real runc containers.
//!
//! Needs root and runc for everything but the git failure test (set
//! KILN_REQUIRE_RUNC to fail instead of skipping without them).

mod common;

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{privileged, text, Env};
use kiln_testkit::sleeper_alive;
use serde_json::{json, Value};

/// A server on 127.0.0.1 with its own runtime: dropping the runtime drops
/// every connection, as a killed server process would.
struct TestServer {
    data: PathBuf,
    addr: SocketAddr,
    admin: String,
    lost_after: Duration,
    runtime: Option<tokio::runtime::Runtime>,
    client: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl TestServer {
    fn start(data: &Path, lost_after: Duration) -> TestServer {
        let (runtime, addr, admin) = serve(data, "127.0.0.1:0".parse().unwrap(), lost_after);
        TestServer {
            data: data.to_owned(),
            addr,
            admin: admin.expect("a new data dir makes an admin token"),
            lost_after,
            runtime: Some(runtime),
            client: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            // No kept-alive connections: they would not survive a restart.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: the listener and every open connection go.
    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }

    /// Serves again on the same port and data directory.
    fn restart(&mut self) {
        assert!(self.runtime.is_none());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let bound = std::panic::catch_unwind(|| serve(&self.data, self.addr, self.lost_after));
            match bound {
                Ok((runtime, _, _)) => {
                    self.runtime = Some(runtime);
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(_) => panic!("could not listen on {} again", self.addr),
            }
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url());
        self.client.block_on(async {
            let mut request = self.http.request(method, url).bearer_auth(&self.admin);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("server answers");
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, value)
        })
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.call(reqwest::Method::POST, path, Some(body));
        assert!(
            (200..300).contains(&status),
            "POST {path}: {status} {value}"
        );
        value
    }

    fn get(&self, path: &str) -> Value {
        let (status, value) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }

    fn add_repo(&self, name: &str, url: &Path) {
        self.post(
            "/api/repos",
            json!({"name": name, "url": url.to_str().unwrap(), "poll_seconds": 0}),
        );
    }

    fn trigger(&self, repo: &str, commit: &str) -> i64 {
        self.post(
            &format!("/api/repos/{repo}/jobs"),
            json!({"commit": commit}),
        )["id"]
            .as_i64()
            .unwrap()
    }

    fn registration_token(&self) -> String {
        self.post("/api/runner-tokens", json!({}))["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn job(&self, id: i64) -> Value {
        self.get(&format!("/api/jobs/{id}"))
    }

    fn logs(&self, id: i64) -> Vec<Value> {
        self.get(&format!("/api/jobs/{id}/logs"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The job's JSON once its status is one of `statuses`.
    fn wait_status(
        &self,
        id: i64,
        statuses: &[&str],
        limit: Duration,
        runner: &RunnerProcess,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let job = self.job(id);
            if statuses.contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} is still {} after {limit:?}\nlog: {:?}\nrunner: {}",
                job["status"],
                joined(&self.logs(id), None),
                runner.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the current attempt's log contains `needle`.
    fn wait_log(&self, id: i64, needle: &str, limit: Duration, runner: &RunnerProcess) {
        let deadline = Instant::now() + limit;
        loop {
            if joined(&self.logs(id), None).contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}'s log never showed {needle:?}: {:?}\nrunner: {}",
                joined(&self.logs(id), None),
                runner.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds on `addr` in a runtime of its own and serves there.
fn serve(
    data: &Path,
    addr: SocketAddr,
    lost_after: Duration,
) -> (tokio::runtime::Runtime, SocketAddr, Option<String>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = kiln_server::ServerConfig::new(data);
    config.listen = addr;
    config.lost_after = lost_after;
    let mut server = runtime
        .block_on(kiln_server::Server::bind(config))
        .expect("bind");
    let addr = server.local_addr().unwrap();
    let admin = server
        .take_initial_admin_token()
        .map(|token| token.expose().to_owned());
    runtime.spawn(async move {
        let _ = server.serve().await;
    });
    (runtime, addr, admin)
}

/// `kiln runner` as a child process; its stderr goes to a file.
struct RunnerProcess {
    child: Child,
    log: PathBuf,
}

impl RunnerProcess {
    fn start(env: &Env, server: &TestServer, name: &str) -> RunnerProcess {
        RunnerProcess::start_with(env, server, name, &[])
    }

    fn start_with(env: &Env, server: &TestServer, name: &str, args: &[&str]) -> RunnerProcess {
        RunnerProcess::start_via(env, server, &server.url(), name, args)
    }

    /// A runner that reaches `server` at `url` (a proxy in front of it).
    fn start_via(
        env: &Env,
        server: &TestServer,
        url: &str,
        name: &str,
        args: &[&str],
    ) -> RunnerProcess {
        let log = env.path(&format!("runner-{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["runner", "--server", url, "--name", name])
            .arg("--store")
            .arg(env.store())
            .arg("--work")
            .arg(env.path("work"))
            .args(args)
            .env("KILN_RUNNER_TOKEN", server.registration_token())
            .env_remove("KILN_LOG")
            .env_remove("KILN_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        RunnerProcess { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal with kill(1).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Its exit status; it must exit within 30 s.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "runner did not stop: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunnerProcess {
    /// After a failed assertion: two signals cancel the runner's jobs (and
    /// kill their containers) before it exits; SIGKILL only as a last resort,
    /// since it would leave containers behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            for signal in ["TERM", "TERM"] {
                let _ = Command::new("kill")
                    .args([format!("-{signal}"), self.child.id().to_string()])
                    .status();
                std::thread::sleep(Duration::from_millis(100));
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on 127.0.0.1 between a runner and the server that can hold
/// back what the runner sends, as a network cut that TCP rides out: the
/// runner's requests wait in the proxy and arrive when it lets them go,
/// while the server's answers still flow (so a `next` the server held
/// before the cut can hand out a job during it).
struct Proxy {
    addr: SocketAddr,
    held: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(AtomicBool::new(false));
        let holding = held.clone();
        // Lives as long as the test process; it only ever relays.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                relay(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(holding.clone()),
                );
                relay(server, client, None);
            }
        });
        Proxy { addr, held }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, what the runner sends waits in the proxy.
    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Delivers what waited, and everything after.
    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread of its own until either closes,
/// keeping each read back while `held` is set.
fn relay(mut from: TcpStream, mut to: TcpStream, held: Option<Arc<AtomicBool>>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            while held.as_ref().is_some_and(|h| h.load(Ordering::SeqCst)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A git repository holding `kiln.star` (and `files`), one commit on main.
fn git_repo(dir: &Path, kiln_star: &str, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("kiln.star"), kiln_star).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "."]);
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.test",
            "commit",
            "-q",
            "-m",
            "ci",
        ],
    );
    git(dir, &["rev-parse", "HEAD"]).trim().to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {:?}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The data of the chunks of `stream` (all streams when `None`), in order.
fn joined(chunks: &[Value], stream: Option<&str>) -> String {
    chunks
        .iter()
        .filter(|c| stream.is_none_or(|s| c["stream"] == s))
        .map(|c| c["data"].as_str().unwrap_or(""))
        .collect()
}

/// Asserts seq runs 0, 1, 2, ... without gap or repeat.
fn assert_contiguous(chunks: &[Value]) {
    let seqs: Vec<i64> = chunks.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (0..seqs.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "seq must count from 0 without gaps or repeats"
    );
}

/// A kiln.star whose `ci` prints "started", then sleeps as `sleep MARKER`
/// (see [`wait_sleeping`]) until something stops it.
fn sleeper_ci(marker: &str) -> String {
    format!(
        r#"
def ci(source: Directory):
    """Sleeps until stopped."""
    return container("busybox:test").with_exec(["sh", "-c", "echo started; exec sleep {marker}"])
"#
    )
}

/// Waits for `sleep MARKER` to run: it follows an `echo started` in the
/// step, so the log may show that a moment before.
fn wait_sleeping(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleeper_alive(marker) {
        assert!(Instant::now() < deadline, "the step never slept");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Containers runc knows under the store's state root.
fn runc_containers(store: &Path) -> Vec<String> {
    kiln_testkit::runtime_containers(&common::runtime(), &store.join("runc"))
}

const STEP_CI: &str = r#"
def ci(source: Directory) -> str:
    """Prints the message from the repository."""
    return (
        container("busybox:test")
        .with_directory("/src", source)
        .with_workdir("/src")
        .with_exec(["sh", "-c", "echo one; echo two >&2; cat message.txt; echo three"])
        .stdout()
    )
"#;

#[test]
fn a_job_runs_streams_its_log_and_steps_and_shares_the_cache_with_kiln_run() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let repo = env.path("repo");
    let commit = git_repo(&repo, STEP_CI, &[("message.txt", "hello from git\n")]);
    server.add_repo("app", &repo);
    let mut runner = RunnerProcess::start(&env, &server, "r1");

    let id = server.trigger("app", &commit);
    let job = server.wait_status(
        id,
        &["succeeded", "failed"],
        Duration::from_secs(120),
        &runner,
    );
    let logs = server.logs(id);
    assert_eq!(job["status"], "succeeded", "{:?}", joined(&logs, None));
    assert_eq!(job["runner_name"], "r1");
    assert_eq!(job["attempt"], 1);
    assert_contiguous(&logs);
    assert_eq!(
        joined(&logs, Some("stdout")),
        "one\nhello from git\nthree\n"
    );
    assert_eq!(joined(&logs, Some("stderr")), "two\n");
    let system = joined(&logs, Some("system"));
    assert!(
        system.contains(&format!("checked out {commit}")),
        "{system}"
    );
    assert!(system.contains("ci succeeded"), "{system}");
    assert!(
        system.contains("hello from git"),
        "the result is in the log: {system}"
    );
    // The step's lines frame its output, as `--progress plain` prints them.
    let all = joined(&logs, None);
    let started = all.find("exec sh -c").expect("the step's start line");
    let output = all.find("hello from git").unwrap();
    let done = started + all[started..].find(" DONE ").expect("the step's end line");
    assert!(started < output && output < done, "{all}");

    let steps = job["steps"].as_array().expect("steps").clone();
    let exec = steps
        .iter()
        .find(|s| s["name"].as_str().unwrap_or("").contains("echo one"))
        .unwrap_or_else(|| panic!("the exec step is reported: {steps:?}"));
    assert_eq!(exec["status"], "succeeded", "{exec}");
    assert_eq!(exec["cached"], false);
    assert!(exec["duration_ms"].as_f64().unwrap() > 0.0, "{exec}");
    assert!(!exec["key"].as_str().unwrap().is_empty());
    // The checkout is gone; the repository's mirror stays for the next job.
    let left: Vec<_> = std::fs::read_dir(env.path("work"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["mirrors"], "the job's checkout is removed");

    // `kiln run` of the same commit on the same store runs nothing.
    let clone = env.path("clone");
    git(
        env.dir.path(),
        &[
            "clone",
            "-q",
            repo.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    let run = env.kiln(&["run", "-m", clone.to_str().unwrap(), "--progress", "plain"]);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(stdout, "one\nhello from git\nthree\n");
    let step_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with('#')).collect();
    assert!(!step_lines.is_empty(), "{stderr}");
    assert!(
        step_lines.iter().all(|l| l.contains(" CACHED ")),
        "every step of the local run is a cache hit:\n{stderr}"
    );

    // A second job of the same commit is all cache hits too.
    let again = server.trigger("app", &commit);
    let job = server.wait_status(
        again,
        &["succeeded", "failed"],
        Duration::from_secs(60),
        &runner,
    );
    assert_eq!(job["status"], "succeeded");
    let steps = job["steps"].as_array().unwrap();
    assert!(
        !steps.is_empty()
            && steps
                .iter()
                .all(|s| s["cached"] == true && s["status"] == "cached"),
        "{steps:?}"
    );
    // Its log still holds the step's output, replayed from the store, after
    // the line that marks the step cached.
    let logs = server.logs(again);
    assert_contiguous(&logs);
    assert_eq!(
        joined(&logs, Some("stdout")),
        "one\nhello from git\nthree\n",
        "{:?}",
        joined(&logs, None)
    );
    assert_eq!(joined(&logs, Some("stderr")), "two\n");
    let all = joined(&logs, None);
    let cached_at = all.find("CACHED").expect("the step is marked cached");
    assert!(all[cached_at..].contains("hello from git"), "{all}");

    // Locally the replay is asked for; without it a hit prints no output.
    let replayed = env.kiln(&[
        "run",
        "-m",
        clone.to_str().unwrap(),
        "--progress",
        "plain",
        "--replay-cached",
    ]);
    let (_, stderr) = text(&replayed);
    assert!(replayed.status.success(), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.ends_with(" | hello from git")),
        "{stderr}"
    );
    assert!(
        !text(&run).1.contains("hello from git"),
        "without --replay-cached a hit shows no output"
    );

    let status = runner.terminate();
    assert!(status.success(), "{}", runner.output());
    assert!(runner.output().contains("stopped"), "{}", runner.output());
}

/// A `ci` that needs no container: prints which version of the tree it sees.
const READ_CI: &str = r#"
def ci(source: Directory) -> str:
    """Reads a file of the checkout."""
    return source.file("version.txt").contents()
"#;

#[test]
fn commits_come_from_the_runners_mirror_once_fetched() {
    // No container runs: this needs neither root nor runc.
    let env = Env::empty();
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let repo = env.path("repo");
    let first = git_repo(&repo, READ_CI, &[("version.txt", "first\n")]);
    server.add_repo("app", &repo);
    let runner = RunnerProcess::start(&env, &server, "r1");
    let done = |id: i64| {
        let job = server.wait_status(
            id,
            &["succeeded", "failed"],
            Duration::from_secs(60),
            &runner,
        );
        let system = joined(&server.logs(id), Some("system"));
        assert_eq!(job["status"], "succeeded", "{system}\n{}", runner.output());
        system
    };
    let log = done(server.trigger("app", &first));
    assert!(log.contains(&format!("checked out {first}")), "{log}");
    assert!(log.contains("first"), "{log}");

    // A new commit is fetched into the mirror; a job without a commit
    // builds the branch's head.
    std::fs::write(repo.join("version.txt"), "second\n").unwrap();
    git(&repo, &["add", "."]);
    git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.test",
            "commit",
            "-q",
            "-m",
            "two",
        ],
    );
    let second = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    let log = done(server.trigger("app", &second));
    assert!(log.contains("second"), "{log}");
    let head_job = server.post("/api/repos/app/jobs", json!({}))["id"]
        .as_i64()
        .unwrap();
    let log = done(head_job);
    assert!(log.contains(&format!("checked out {second}")), "{log}");
    assert_eq!(
        server.job(head_job)["commit"],
        second.as_str(),
        "a job queued without a commit records the one it built"
    );

    // With the remote gone, commits the mirror holds still build.
    std::fs::rename(&repo, env.path("repo-moved")).unwrap();
    let log = done(server.trigger("app", &first));
    assert!(log.contains("first"), "{log}");
}

#[test]
fn a_commit_git_cannot_fetch_fails_the_job_with_gits_error_in_the_log() {
    // No container runs: this needs neither root nor runc.
    let env = Env::empty();
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let repo = env.path("repo");
    git_repo(&repo, STEP_CI, &[]);
    server.add_repo("app", &repo);
    let runner = RunnerProcess::start(&env, &server, "r1");

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let id = server.trigger("app", missing);
    let job = server.wait_status(
        id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
        &runner,
    );
    assert_eq!(job["status"], "failed");
    let logs = server.logs(id);
    assert_contiguous(&logs);
    let system = joined(&logs, Some("system"));
    assert!(system.contains("git fetch -q"), "{system}");
    // git's own words, from its stderr.
    assert!(
        system.contains(missing) && system.to_lowercase().contains("fatal"),
        "{system}"
    );
    assert!(joined(&logs, Some("stdout")).is_empty());
}

#[test]
fn a_cancelled_job_has_its_container_killed_within_two_seconds() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let marker = format!("{}", 7000 + std::process::id() % 1000);
    let kiln_star = sleeper_ci(&marker);
    let repo = env.path("repo");
    let commit = git_repo(&repo, &kiln_star, &[]);
    server.add_repo("app", &repo);
    let mut runner = RunnerProcess::start(&env, &server, "r1");

    let id = server.trigger("app", &commit);
    server.wait_log(id, "started", Duration::from_secs(60), &runner);
    wait_sleeping(&marker);
    let cancelled_at = Instant::now();
    let answer = server.post(&format!("/api/jobs/{id}/cancel"), json!({}));
    assert_eq!(answer["status"], "cancelled");
    loop {
        let alive = sleeper_alive(&marker);
        let containers = runc_containers(&env.store());
        if !alive && containers.is_empty() {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "2 s after the cancel: sleeper alive {alive}, containers {containers:?}\n{}",
            runner.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "container gone {:?} after the cancel",
        cancelled_at.elapsed()
    );
    assert_eq!(server.job(id)["status"], "cancelled");

    // The runner carries on with the next job.
    let next = server.trigger("app", &commit);
    server.wait_log(next, "started", Duration::from_secs(60), &runner);
    wait_sleeping(&marker);
    server.post(&format!("/api/jobs/{next}/cancel"), json!({}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeper_alive(&marker) {
        assert!(Instant::now() < deadline, "{}", runner.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        runner
            .output()
            .contains(&format!("job {id} (attempt 1) dropped")),
        "{}",
        runner.output()
    );
    assert!(runner.terminate().success());
}

#[test]
fn a_job_of_a_killed_runner_finishes_on_another() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(3));
    let kiln_star = r#"
def ci(source: Directory):
    """Takes a while."""
    return container("busybox:test").with_exec(["sh", "-c", "echo begin; sleep 3; echo end"])
"#;
    let repo = env.path("repo");
    let commit = git_repo(&repo, kiln_star, &[]);
    server.add_repo("app", &repo);
    let mut first = RunnerProcess::start(&env, &server, "first");

    let id = server.trigger("app", &commit);
    server.wait_log(id, "begin", Duration::from_secs(60), &first);
    assert_eq!(server.job(id)["runner_name"], "first");
    first.child.kill().unwrap(); // SIGKILL: no goodbye
    first.child.wait().unwrap();
    let abandoned = env.path("work").join(format!("job-{id}-1"));
    assert!(abandoned.is_dir(), "the killed runner left its checkout");
    // Same work directory: the new runner removes the checkout nobody holds.
    let mut second = RunnerProcess::start(&env, &server, "second");

    let job = server.wait_status(
        id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
        &second,
    );
    let logs = server.logs(id);
    assert_eq!(job["status"], "succeeded", "{:?}", joined(&logs, None));
    assert_eq!(job["runner_name"], "second");
    assert_eq!(job["attempt"], 2);
    assert_contiguous(&logs);
    assert_eq!(joined(&logs, Some("stdout")), "begin\nend\n");
    assert!(joined(&logs, Some("system")).contains("attempt 2"));
    assert!(second.terminate().success());

    assert!(!abandoned.exists(), "{}", second.output());
    assert!(
        second.output().contains("removed 1 checkout(s)"),
        "{}",
        second.output()
    );
}

#[test]
fn a_server_restart_mid_job_loses_and_repeats_no_log_chunk() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let mut server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let kiln_star = r#"
def ci(source: Directory):
    """Prints a line every 50 ms for a few seconds."""
    return container("busybox:test").with_exec(
        ["sh", "-c", "echo begin; i=0; while [ $i -lt 80 ]; do i=$((i+1)); echo line $i; sleep 0.05; done; echo end"]
    )
"#;
    let repo = env.path("repo");
    let commit = git_repo(&repo, kiln_star, &[]);
    server.add_repo("app", &repo);
    let mut runner = RunnerProcess::start(&env, &server, "r1");

    let id = server.trigger("app", &commit);
    server.wait_log(id, "line 3\n", Duration::from_secs(60), &runner);
    server.stop();
    // The job runs on, its output piling up in the runner.
    // Long enough for the runner's retries to back off to 2 s apart.
    std::thread::sleep(Duration::from_millis(3000));
    server.restart();
    // The backlog (at least 30 lines by now) goes out as soon as the runner
    // sees the server again, not after its retry backoff.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runner.output().contains("answers again") {
        assert!(Instant::now() < deadline, "{}", runner.output());
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen_again = Instant::now();
    while !joined(&server.logs(id), Some("stdout")).contains("line 30\n") {
        assert!(Instant::now() < deadline, "{}", runner.output());
        std::thread::sleep(Duration::from_millis(10));
    }
    let backlog_delay = seen_again.elapsed();
    eprintln!("backlog delivered {backlog_delay:?} after the runner saw the server again");
    assert!(
        backlog_delay < Duration::from_millis(700),
        "backlog took {backlog_delay:?}"
    );

    let job = server.wait_status(
        id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
        &runner,
    );
    let logs = server.logs(id);
    assert_eq!(job["status"], "succeeded", "{:?}", joined(&logs, None));
    assert_eq!(job["attempt"], 1, "the runner was not lost");
    assert_contiguous(&logs);
    let mut expected = String::from("begin\n");
    for i in 1..=80 {
        expected.push_str(&format!("line {i}\n"));
    }
    expected.push_str("end\n");
    assert_eq!(joined(&logs, Some("stdout")), expected);
    let output = runner.output();
    assert_eq!(output.matches("cannot reach").count(), 1, "{output}");
    assert_eq!(output.matches("answers again").count(), 1, "{output}");
    assert!(runner.terminate().success());
}

#[test]
fn sigterm_lets_the_running_job_finish_and_a_second_one_cancels_it() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let marker = format!("{}", 8000 + std::process::id() % 1000);
    let slow = env.path("slow");
    let slow_commit = git_repo(
        &slow,
        r#"
def ci(source: Directory):
    """Takes two seconds."""
    return container("busybox:test").with_exec(["sh", "-c", "echo begin; sleep 2; echo end"])
"#,
        &[],
    );
    let sleepy = env.path("sleepy");
    let sleepy_commit = git_repo(&sleepy, &sleeper_ci(&marker), &[]);
    server.add_repo("slow", &slow);
    server.add_repo("sleepy", &sleepy);

    // First signal: the running job finishes, no new one is taken.
    let mut runner = RunnerProcess::start(&env, &server, "r1");
    let finishing = server.trigger("slow", &slow_commit);
    server.wait_log(finishing, "begin", Duration::from_secs(60), &runner);
    runner.signal("TERM");
    let waiting = server.trigger("sleepy", &sleepy_commit);
    let status = runner.wait_exit();
    assert!(status.success(), "{}", runner.output());
    assert_eq!(server.job(finishing)["status"], "succeeded");
    assert_eq!(
        joined(&server.logs(finishing), Some("stdout")),
        "begin\nend\n"
    );
    assert_eq!(
        server.job(waiting)["status"],
        "queued",
        "{}",
        runner.output()
    );

    // Second signal: the running job is cancelled, reported as failed.
    let mut runner = RunnerProcess::start(&env, &server, "r2");
    server.wait_log(waiting, "started", Duration::from_secs(60), &runner);
    wait_sleeping(&marker);
    runner.signal("INT");
    std::thread::sleep(Duration::from_millis(300));
    assert!(sleeper_alive(&marker), "one signal leaves the job running");
    runner.signal("INT");
    let status = runner.wait_exit();
    assert!(status.success(), "{}", runner.output());
    assert!(!sleeper_alive(&marker));
    assert_eq!(server.job(waiting)["status"], "failed");
    let logs = server.logs(waiting);
    assert_contiguous(&logs);
    assert!(
        joined(&logs, Some("system")).contains("cancelled: the runner is shutting down"),
        "{:?}",
        joined(&logs, None)
    );
}

#[test]
fn two_slots_run_two_jobs_at_once_each_on_its_own_engine() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let mut jobs = Vec::new();
    for name in ["left", "right"] {
        let repo = env.path(name);
        // Different commands: neither job can take the other's result.
        let commit = git_repo(
            &repo,
            &format!(
                r#"
def ci(source: Directory):
    """Waits for the other job."""
    return container("busybox:test").with_exec(["sh", "-c", "echo begin {name}; sleep 2; echo end {name}"])
"#
            ),
            &[],
        );
        server.add_repo(name, &repo);
        jobs.push((name, commit));
    }
    let mut runner = RunnerProcess::start_with(&env, &server, "r1", &["--concurrency", "2"]);
    let ids: Vec<i64> = jobs
        .iter()
        .map(|(name, commit)| server.trigger(name, commit))
        .collect();
    // Both run at once: each has begun while neither has ended.
    for (id, (name, _)) in ids.iter().zip(&jobs) {
        server.wait_log(
            *id,
            &format!("begin {name}"),
            Duration::from_secs(60),
            &runner,
        );
    }
    for id in &ids {
        let log = joined(&server.logs(*id), Some("stdout"));
        assert!(
            !log.contains("end"),
            "the jobs ran one after the other: {log}"
        );
    }
    for (id, (name, _)) in ids.iter().zip(&jobs) {
        let job = server.wait_status(
            *id,
            &["succeeded", "failed"],
            Duration::from_secs(60),
            &runner,
        );
        let logs = server.logs(*id);
        assert_eq!(job["status"], "succeeded", "{:?}", joined(&logs, None));
        assert_contiguous(&logs);
        assert_eq!(
            joined(&logs, Some("stdout")),
            format!("begin {name}\nend {name}\n")
        );
    }
    assert!(runner.terminate().success());
}

#[test]
fn a_job_requeued_in_a_network_cut_and_claimed_again_by_its_runner_runs_once() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let lost_after = Duration::from_secs(2);
    let server = TestServer::start(&env.path("server"), lost_after);
    let proxy = Proxy::start(server.addr);
    let kiln_star = r#"
def ci(source: Directory):
    """Takes a while."""
    return container("busybox:test").with_exec(["sh", "-c", "echo begin; sleep 6; echo end"])
"#;
    let repo = env.path("repo");
    let commit = git_repo(&repo, kiln_star, &[]);
    server.add_repo("app", &repo);
    // Two slots: while the first runs attempt 1, the second waits in a
    // `next` that the server holds (30 s).
    let mut runner =
        RunnerProcess::start_via(&env, &server, &proxy.url(), "r1", &["--concurrency", "2"]);
    let id = server.trigger("app", &commit);
    server.wait_log(id, "begin", Duration::from_secs(25), &runner);

    // The runner's heartbeats stop arriving: after the runner timeout the
    // job is requeued, and the second slot's waiting `next` takes attempt 2.
    proxy.hold();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = server.job(id);
        if job["attempt"] == 2 && job["status"] == "running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempt 2 was not claimed: {job}\n{}",
            runner.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The held heartbeat, listing attempt 1, arrives now.
    proxy.release();

    let job = server.wait_status(
        id,
        &["succeeded", "failed"],
        Duration::from_secs(60),
        &runner,
    );
    let logs = server.logs(id);
    let system = joined(&logs, Some("system"));
    assert_eq!(job["status"], "succeeded", "{:?}", joined(&logs, None));
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["runner_name"], "r1");
    // Only attempt 2's own reports, from seq 0, each once.
    assert_contiguous(&logs);
    assert_eq!(joined(&logs, Some("stdout")), "begin\nend\n");
    assert!(system.contains("attempt 2:"), "{system}");
    assert!(!system.contains("attempt 1:"), "{system}");
    assert_eq!(system.matches("ci succeeded").count(), 1, "{system}");
    // Attempt 1 was stopped; attempt 2 is what finished the job.
    let output = runner.output();
    assert!(
        output.contains(&format!("job {id} (attempt 1) dropped")),
        "{output}"
    );
    assert!(
        output.contains(&format!("job {id} (attempt 2) succeeded")),
        "{output}"
    );
    assert!(runner.terminate().success());
}

/// CPU seconds `pid` has used so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

#[test]
fn a_cancelled_job_whose_pipeline_loops_stops_evaluating() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let repo = env.path("repo");
    let commit = git_repo(
        &repo,
        r#"
def ci(source: Directory):
    """Never returns."""
    for i in range(1000000):
        for j in range(1000000):
            pass
"#,
        &[],
    );
    server.add_repo("app", &repo);
    let mut runner = RunnerProcess::start(&env, &server, "r1");
    let id = server.trigger("app", &commit);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.job(id)["status"] != "running" {
        assert!(Instant::now() < deadline, "{}", runner.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Evaluating: the runner burns a core.
    std::thread::sleep(Duration::from_millis(500));
    let answer = server.post(&format!("/api/jobs/{id}/cancel"), json!({}));
    assert_eq!(answer["status"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !runner
        .output()
        .contains(&format!("job {id} (attempt 1) dropped"))
    {
        assert!(Instant::now() < deadline, "{}", runner.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(runner.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(runner.child.id()) - before;
    assert!(
        used < 0.5,
        "the runner used {used:.2} CPU s in 2 s after the cancel: the evaluation still runs"
    );
    // And SIGTERM stops it, with nothing left running.
    runner.signal("TERM");
    let status = runner.wait_exit();
    assert!(status.success(), "{}", runner.output());
}

#[test]
fn a_repositorys_limits_replace_the_runners_defaults() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let marker = format!("{}", 9000 + std::process::id() % 1000);
    let kiln_star = sleeper_ci(&marker);
    let repo = env.path("repo");
    let commit = git_repo(&repo, &kiln_star, &[]);
    let url = repo.to_str().unwrap();
    // One repository bounds each step, the other the whole job; the
    // runner's own defaults are an hour each.
    server.post(
        "/api/repos",
        json!({"name": "steps", "url": url, "poll_seconds": 0,
               "limits": {"step_timeout_ms": 2000}}),
    );
    server.post(
        "/api/repos",
        json!({"name": "jobs", "url": url, "poll_seconds": 0,
               "limits": {"job_timeout_ms": 3000}}),
    );
    let (status, refused) = server.call(
        reqwest::Method::POST,
        "/api/repos",
        Some(json!({"name": "bad", "url": url, "limits": {"step_memory_bytes": -1}})),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused.to_string().contains("limits.step_memory_bytes"),
        "{refused}"
    );

    let mut runner = RunnerProcess::start_with(
        &env,
        &server,
        "r1",
        &["--step-timeout", "1h", "--job-timeout", "1h"],
    );
    let started = Instant::now();
    let step_bound = server.trigger("steps", &commit);
    let job_bound = server.trigger("jobs", &commit);
    for id in [step_bound, job_bound] {
        let job = server.wait_status(
            id,
            &["failed", "succeeded"],
            Duration::from_secs(60),
            &runner,
        );
        assert_eq!(job["status"], "failed", "{job}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let log = joined(&server.logs(step_bound), None);
    assert!(log.contains("timed out after 2 s"), "{log}");
    assert!(!log.contains("job timed out"), "{log}");
    let log = joined(&server.logs(job_bound), None);
    assert!(
        log.contains("the job timed out after 3 s (the repository's job timeout)"),
        "{log}"
    );
    assert!(!sleeper_alive(&marker));
    assert!(runc_containers(&env.store()).is_empty());
    assert!(runner.terminate().success());
}

#[test]
fn a_job_past_the_runners_job_timeout_fails_saying_so_and_its_steps_are_killed() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let server = TestServer::start(&env.path("server"), Duration::from_secs(10));
    let marker = format!("{}", 8000 + std::process::id() % 1000);
    let kiln_star = sleeper_ci(&marker);
    let repo = env.path("repo");
    let commit = git_repo(&repo, &kiln_star, &[]);
    server.add_repo("app", &repo);
    let mut runner = RunnerProcess::start_with(&env, &server, "r1", &["--job-timeout", "3s"]);
    let started = Instant::now();
    let id = server.trigger("app", &commit);
    let job = server.wait_status(
        id,
        &["failed", "succeeded"],
        Duration::from_secs(60),
        &runner,
    );
    assert_eq!(job["status"], "failed", "{job}");
    let log = joined(&server.logs(id), None);
    assert!(
        log.contains("timed out after 3 s (the runner's --job-timeout)"),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(!sleeper_alive(&marker));
    assert!(runc_containers(&env.store()).is_empty());
    assert!(runner.terminate().success());
}
