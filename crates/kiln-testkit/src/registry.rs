//! A real OCI registry for tests, and a proxy that breaks its answers.
//!
//! [`TestRegistry`] runs Debian's `docker-registry` (CNCF distribution 2.8)
//! on 127.0.0.1 with a free port and its storage in a temp dir, optionally
//! behind htpasswd basic auth, and puts images into it with `skopeo`.
//! [`FaultProxy`] sits between a client and the registry to cut a response
//! short or flip a byte of it, and records every request it forwards.
//!
//! Both need programs from Debian (`docker-registry`, `skopeo`,
//! `apache2-utils` for `htpasswd`; `scripts/deps.sh` installs them). When
//! one is missing, [`TestRegistry::start`] prints why and returns `None`
//! so the test can return early, unless `KILN_REQUIRE_REGISTRY` is set (as
//! `scripts/test.sh` sets it): then it panics, because a skipped registry
//! test in CI would be a test that cannot fail.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why registry tests cannot run here, if they cannot.
fn missing_tools(auth: bool) -> Option<String> {
    let mut missing = Vec::new();
    if !Path::new(REGISTRY_BINARY).is_file() {
        missing.push("docker-registry");
    }
    if !on_path("skopeo") {
        missing.push("skopeo");
    }
    if auth && !on_path("htpasswd") {
        missing.push("htpasswd (apache2-utils)");
    }
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// A running `docker-registry` on 127.0.0.1, killed when dropped.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    auth: Option<(String, String)>,
    child: Option<Child>,
}

impl TestRegistry {
    /// Starts a registry, with htpasswd basic auth for `auth` (user,
    /// password) when given. `None` (after printing why) when the tools
    /// are missing, unless `KILN_REQUIRE_REGISTRY` is set.
    pub fn start(auth: Option<(&str, &str)>) -> Option<TestRegistry> {
        if let Some(why) = missing_tools(auth.is_some()) {
            if std::env::var_os("KILN_REQUIRE_REGISTRY").is_some() {
                panic!("this test needs a registry: {why} (scripts/deps.sh installs them)");
            }
            eprintln!("skipping: {why} (docker-registry, skopeo and apache2-utils are needed)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("create registry dir");
        let port = free_port();
        let mut auth_section = String::new();
        if let Some((user, password)) = auth {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(
                output.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &output.stdout).expect("write htpasswd");
            auth_section = format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                path.display()
            );
        }
        // A fixed secret keeps upload sessions valid across a restart.
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  \
             filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  \
             secret: kiln-test-registry-secret\n{auth_section}",
            storage = dir.path().join("storage").display(),
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("write registry config");
        let mut registry = TestRegistry {
            dir,
            port,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            child: None,
        };
        registry.spawn();
        Some(registry)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What the registry wrote so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log");
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.answers() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "docker-registry exited ({status}) before answering:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "docker-registry did not answer GET /v2/ within {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v2/` gets an HTTP answer (401 counts: auth is on).
    fn answers(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.1 401")
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user and password the registry was started with.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Kills the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn creds_args(&self, flag: &str) -> Vec<String> {
        match &self.auth {
            Some((user, password)) => vec![flag.to_owned(), format!("{user}:{password}")],
            None => Vec::new(),
        }
    }

    fn skopeo(&self, args: &[String]) -> Vec<u8> {
        let output = Command::new("skopeo")
            .arg("--insecure-policy")
            .args(args)
            .output()
            .expect("run skopeo");
        assert!(
            output.status.success(),
            "skopeo {} failed: {}\nregistry log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        output.stdout
    }

    /// `skopeo copy --all --preserve-digests SRC DST` without TLS checks,
    /// with this registry's credentials for whichever side is a
    /// `docker://` reference: an index is copied whole, and every digest
    /// stays what the source had.
    pub fn skopeo_copy(&self, src: &str, dst: &str) {
        let mut args = vec![
            "copy".to_owned(),
            "--all".to_owned(),
            "--preserve-digests".to_owned(),
            "--src-tls-verify=false".to_owned(),
            "--dest-tls-verify=false".to_owned(),
        ];
        if src.starts_with("docker://") {
            args.extend(self.creds_args("--src-creds"));
        }
        if dst.starts_with("docker://") {
            args.extend(self.creds_args("--dest-creds"));
        }
        args.push(src.to_owned());
        args.push(dst.to_owned());
        self.skopeo(&args);
    }

    /// The manifest bytes `image` (`docker://...`) names, as served.
    pub fn skopeo_inspect_raw(&self, image: &str) -> Vec<u8> {
        let mut args = vec![
            "inspect".to_owned(),
            "--raw".to_owned(),
            "--tls-verify=false".to_owned(),
        ];
        args.extend(self.creds_args("--creds"));
        args.push(image.to_owned());
        self.skopeo(&args)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request the proxy forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl ProxiedRequest {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to do to a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Forward this many body bytes, then drop both connections.
    CutAfter(u64),
    /// Flip every bit of the body byte at this offset.
    CorruptByte(u64),
}

type Hook = Arc<dyn Fn() + Send + Sync>;

/// A fault applied to the responses of matching requests.
pub struct Fault {
    method: String,
    path_contains: String,
    action: FaultAction,
    times: usize,
    then: Option<Hook>,
}

impl Fault {
    /// Applies `action` to the response of the next `GET` whose path
    /// contains `path_contains` (a blob digest, say).
    pub fn on_get(path_contains: &str, action: FaultAction) -> Fault {
        Fault {
            method: "GET".into(),
            path_contains: path_contains.to_owned(),
            action,
            times: 1,
            then: None,
        }
    }

    /// Applies it to this many matching responses (`usize::MAX`: all).
    pub fn times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }

    /// Runs `hook` (on the proxy's thread) after a cut, e.g. to kill and
    /// restart the registry.
    pub fn then(mut self, hook: impl Fn() + Send + Sync + 'static) -> Fault {
        self.then = Some(Arc::new(hook));
        self
    }
}

struct ProxyShared {
    upstream: String,
    requests: Mutex<Vec<ProxiedRequest>>,
    faults: Mutex<Vec<Fault>>,
    stop: AtomicBool,
}

/// A one-request-per-connection HTTP proxy on 127.0.0.1 in front of a
/// registry. Each request goes upstream with `Connection: close`, so every
/// response ends with its connection and the client opens a new one per
/// request; that keeps the proxy free of HTTP framing beyond the headers.
/// Connections that do not start with an HTTP request (a TLS handshake)
/// are closed at once.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream: upstream.to_owned(),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let shared = accept_shared.clone();
                    std::thread::spawn(move || handle(conn, &shared));
                }
            }
        });
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Every request forwarded so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads up to the end of the HTTP head; returns head and the bytes after.
fn read_head(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf[0].is_ascii_uppercase() || buf.len() > 64 << 10 {
            return None;
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
    }
}

fn handle(mut client: TcpStream, shared: &ProxyShared) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let Some((head, rest)) = read_head(&mut client) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    lock(&shared.requests).push(ProxiedRequest {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
    });
    let fault = {
        let mut faults = lock(&shared.faults);
        faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path_contains))
            .map(|f| {
                f.times -= 1;
                (f.action, f.then.clone())
            })
    };

    let Ok(mut upstream) = TcpStream::connect(&shared.upstream) else {
        // The registry is down: the client sees its connection closed.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let mut forwarded = format!("{request_line}\r\n");
    for (name, value) in &headers {
        if !["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            forwarded.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(forwarded.as_bytes()).is_err() || upstream.write_all(&rest).is_err() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    // The request body (if any) streams on in the background.
    if let (Ok(mut from), Ok(mut to)) = (client.try_clone(), upstream.try_clone()) {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
        });
    }

    let mut head_buf: Vec<u8> = Vec::new();
    let mut in_body = false;
    let mut body_pos: u64 = 0;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match upstream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = chunk[..n].to_vec();
        if !in_body {
            head_buf.extend_from_slice(&data);
            let Some(end) = find(&head_buf, b"\r\n\r\n") else {
                continue;
            };
            data = head_buf.split_off(end + 4);
            if client.write_all(&head_buf).is_err() {
                break;
            }
            in_body = true;
        }
        let len = data.len() as u64;
        match fault {
            Some((FaultAction::CorruptByte(at), _)) if at >= body_pos && at < body_pos + len => {
                data[(at - body_pos) as usize] ^= 0xff;
            }
            Some((FaultAction::CutAfter(limit), ref hook)) if body_pos + len >= limit => {
                let keep = limit.saturating_sub(body_pos) as usize;
                let _ = client.write_all(&data[..keep]);
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                if let Some(hook) = hook {
                    hook();
                }
                return;
            }
            _ => {}
        }
        body_pos += len;
        if client.write_all(&data).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}
