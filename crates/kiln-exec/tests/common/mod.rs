//! Shared fixture for the integration tests: real runc, real overlayfs.
//!
//! Tests skip (with a printed reason) only when not root or runc is missing;
//! with `KILN_REQUIRE_RUNC=1` (set it in CI) those skips are failures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_exec::{ExitStatus, Network, OutputStream, RunSpec, Runtime};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub runtime: Runtime,
    /// The busybox base layer.
    pub base: PathBuf,
    pub runc: PathBuf,
}

pub fn runc_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_TEST_RUNC") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/runc"),
        PathBuf::from("/usr/bin/runc"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("runc")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// `None` (after printing why) when the tests cannot run here.
pub fn fixture(test: &str) -> Option<Fixture> {
    let reason = if !rustix::process::geteuid().is_root() {
        Some("not running as root (overlay mounts and runc need it)".to_string())
    } else if runc_path().is_none() {
        Some("runc not found (install it: apt-get install runc)".to_string())
    } else {
        None
    };
    if let Some(reason) = reason {
        if std::env::var_os("KILN_REQUIRE_RUNC").is_some() {
            panic!("{test}: {reason}, but KILN_REQUIRE_RUNC is set");
        }
        eprintln!("SKIPPED {test}: {reason}");
        return None;
    }
    let runc = runc_path()?;
    let dir = tempfile::Builder::new()
        .prefix("kiln-exec-test-")
        .tempdir()
        .expect("tempdir");
    let base = dir.path().join("layers/base");
    std::fs::create_dir_all(&base).expect("base layer dir");
    kiln_testkit::busybox_rootfs(&base);
    let runtime = Runtime::new(runc.clone(), dir.path().join("state"));
    Some(Fixture {
        dir,
        runtime,
        base,
        runc,
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Fixture {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A spec with fresh bundle/upper/work dirs on the base layer.
    pub fn spec(&self, args: &[&str]) -> RunSpec {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let run = self.path().join(format!("runs/run{n}"));
        let (bundle, upper, work) = (run.join("bundle"), run.join("upper"), run.join("work"));
        for d in [&bundle, &upper, &work] {
            std::fs::create_dir_all(d).expect("run dirs");
        }
        RunSpec {
            container_id: format!("kiln-exec-test-{}-{n}", std::process::id()),
            bundle_dir: bundle,
            lower_layers: vec![self.base.clone()],
            upper_dir: upper,
            work_dir: work,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            user: None,
            network: Network::None,
            mounts: vec![],
            hostname: None,
            limits: kiln_exec::StepLimits::default(),
            rlimits: vec![],
            timeout: None,
        }
    }

    /// Runs `spec`, collecting stdout and stderr.
    pub async fn run(
        &self,
        spec: RunSpec,
    ) -> (Result<ExitStatus, kiln_exec::Error>, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let result = self
            .runtime
            .run(spec, |stream, chunk| {
                match stream {
                    OutputStream::Stdout => out.extend_from_slice(chunk),
                    OutputStream::Stderr => err.extend_from_slice(chunk),
                }
                None
            })
            .await;
        (
            result,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    /// Runs `sh -c script` and expects success; returns stdout.
    pub async fn sh(&self, mut spec: RunSpec, script: &str) -> String {
        spec.args = vec!["sh".into(), "-c".into(), script.into()];
        let (result, out, err) = self.run(spec).await;
        let status = result.unwrap_or_else(|e| panic!("run failed: {e}\nstderr: {err}"));
        assert!(status.success(), "{status}; stdout: {out}; stderr: {err}");
        out
    }

    /// Container ids the runtime still knows in this fixture's state root.
    pub fn runc_list(&self) -> Vec<String> {
        let out = std::process::Command::new(&self.runc)
            .arg("--root")
            .arg(self.runtime.state_root())
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Mount points under `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Every path under `root`, relative, sorted, with a type suffix:
/// `/` dirs, `@` symlinks, `c<major>:<minor>` char devices.
pub fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            let ft = meta.file_type();
            if ft.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else if ft.is_symlink() {
                out.push(format!("{rel}@"));
            } else if ft.is_char_device() {
                let rdev = meta.rdev();
                out.push(format!(
                    "{rel} c{}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                ));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}
