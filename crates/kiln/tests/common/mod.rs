//! The harness shared by the `kiln` binary's tests: a temporary store with
//! the busybox test image imported, and a way to run `kiln` against it.

#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::process::{Command, Output};

pub use kiln_testkit::privileged;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// An empty work directory and store, with no image imported.
    pub fn empty() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A store with busybox imported as `busybox:latest` (the examples' name)
    /// and `busybox:test`, its layer compressed as given.
    pub fn with_busybox(compression: kiln_testkit::Compression) -> Env {
        let env = Env::empty();
        let layout = kiln_testkit::busybox_image(env.dir.path(), compression);
        for tag in ["busybox:latest", "busybox:test"] {
            let out = env.kiln(&["image", "import", layout.to_str().unwrap(), "--tag", tag]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `kiln ARGS` on this store, run from the work directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .env("KILN_STORE", self.store())
            .env_remove("KILN_LOG")
            .current_dir(self.dir.path());
        cmd
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Containers the runtime still knows under this store.
    pub fn runc_list(&self) -> Vec<String> {
        kiln_testkit::runtime_containers(&runtime(), &self.store().join("runc"))
    }

    /// Writes a kiln.star (and friends) into a fresh module directory.
    pub fn module(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(name);
        for (rel, text) in files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    /// A counter that steps increment in a cache volume: proves a step ran.
    pub fn counter(&self, volume: &str, name: &str) -> u32 {
        std::fs::read_to_string(self.store().join("volumes").join(volume).join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The runtime the kiln under test uses (KILN_RUNTIME, else its default),
/// as the engine picks it.
pub fn runtime() -> PathBuf {
    kiln_engine::EngineOptions::default().runtime
}

/// A shell snippet that increments /count/NAME.
pub fn bump(name: &str) -> String {
    format!("n=$(cat /count/{name} 2>/dev/null || echo 0); echo $((n+1)) > /count/{name}")
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository's root.
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The OCI archive of a Debian image holding `packages`, built by
/// scripts/debian-image.sh once per machine and package list. `None` (with
/// the reason printed) only when debootstrap cannot run here; a build that
/// fails for another reason fails the test.
pub fn debian_image(packages: &[&str]) -> Option<PathBuf> {
    let has_debootstrap = Command::new("sh")
        .args([
            "-c",
            "command -v debootstrap || test -x /usr/sbin/debootstrap",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_debootstrap {
        let why = "debootstrap is not installed (scripts/deps.sh installs it)";
        if std::env::var_os("KILN_REQUIRE_PRIVILEGED").is_some() {
            panic!("this test needs a Debian image: {why}");
        }
        eprintln!("skipping: this test needs a Debian image, and {why}");
        return None;
    }
    let started = std::time::Instant::now();
    let out = Command::new(repo().join("scripts/debian-image.sh"))
        .args(packages)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "scripts/debian-image.sh failed:\n{stderr}"
    );
    eprintln!(
        "debian image ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        stdout.trim()
    );
    Some(PathBuf::from(stdout.trim()))
}

/// A fresh store with a Debian image of `packages` imported as `tag`.
pub fn debian_env(packages: &[&str], tag: &str) -> Option<Env> {
    if !privileged() {
        return None;
    }
    let tarball = debian_image(packages)?;
    let env = Env::empty();
    let started = std::time::Instant::now();
    let out = env.kiln(&["image", "import", tarball.to_str().unwrap(), "--tag", tag]);
    assert!(out.status.success(), "{:?}", text(&out));
    eprintln!("imported in {:.1}s", started.elapsed().as_secs_f64());
    Some(env)
}
