//! File times in steps (issue 12): files copied in from the host keep the
//! host's mtimes, so make and cargo with their outputs on a cache volume
//! rebuild what changed since, and zip-based tools (a Python wheel build)
//! accept the files. Real tools from a Debian image that
//! scripts/debian-image.sh builds with debootstrap, cached outside the
//! repository after the first build. Needs root and runc.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{text, Env};

/// Each test's tools, in an image of its own: importing and unpacking an
/// image is most of a test's time, and rustc alone is most of a Debian
/// image with it.
const MAKE_PACKAGES: &[&str] = &["make", "gcc", "libc6-dev"];
/// libc6-dev named: rustc needs it through a virtual package (libc-dev),
/// which debootstrap does not resolve.
const CARGO_PACKAGES: &[&str] = &["cargo", "libc6-dev"];
/// flit's flit_core builds wheels without a network.
const WHEEL_PACKAGES: &[&str] = &["python3", "flit"];
const IMAGE: &str = "debian:mtimes";

/// A fresh store with a Debian image of `packages` imported as [`IMAGE`].
fn debian_env(packages: &[&str]) -> Option<Env> {
    common::debian_env(packages, IMAGE)
}

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// `kiln call FUNCTION --source SOURCE` of the module; its output, checked
/// to have succeeded.
fn call(env: &Env, module: &Path, function: &str, source: &Path) -> (String, String) {
    let out: Output = env.kiln(&[
        "call",
        "-m",
        module.to_str().unwrap(),
        function,
        "--source",
        source.to_str().unwrap(),
        "--progress",
        "plain",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "kiln call {function} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

const MAKE_STAR: &str = r#"
def _app(source, command):
    return (
        container("debian:mtimes")
        .with_directory("/src", source)
        .with_mounted_cache("/out", cache_volume("make-out"))
        .with_workdir("/src")
        .with_exec(["sh", "-c", command])
        .stdout()
    )

def build(source: Directory) -> str:
    """Builds the app into the cache volume with make, then runs it."""
    return _app(source, "make OUT=/out && /out/app")

def build_and_run_twice(source: Directory) -> str:
    """The same build, then the app twice: another step over the same copy."""
    return _app(source, "make OUT=/out && /out/app && /out/app")
"#;

const MAKEFILE: &str = "OUT ?= out\n$(OUT)/app: main.c\n\tgcc -o $@ main.c\n";

fn main_c(version: &str) -> String {
    format!("#include <stdio.h>\nint main(void) {{ puts(\"version {version}\"); return 0; }}\n")
}

#[test]
fn make_rebuilds_outputs_on_a_cache_volume_after_a_one_line_change_and_a_revert() {
    let Some(env) = debian_env(MAKE_PACKAGES) else {
        return;
    };
    let module = env.module("make-mod", &[("kiln.star", MAKE_STAR)]);
    let src = env.path("make-src");
    write(&src.join("Makefile"), MAKEFILE);
    write(&src.join("main.c"), &main_c("one"));

    let (out, _) = call(&env, &module, "build", &src);
    assert!(out.contains("gcc -o /out/app main.c"), "{out}");
    assert!(out.ends_with("version one\n"), "{out}");

    // Edited after /out/app was built, so newer than it: on the host make
    // would rebuild, and so must it in the step.
    write(&src.join("main.c"), &main_c("two"));
    let (out, _) = call(&env, &module, "build", &src);
    assert!(!out.contains("up to date"), "stale output kept: {out}");
    assert!(out.contains("gcc -o /out/app main.c"), "{out}");
    assert!(out.ends_with("version two\n"), "{out}");

    // Back to the first version: the same content as the first run, so the
    // same key, and its cached result is the right one.
    write(&src.join("main.c"), &main_c("one"));
    let (out, progress) = call(&env, &module, "build", &src);
    assert!(out.ends_with("version one\n"), "{out}");
    assert!(progress.contains("CACHED"), "{progress}");

    // A new step over that same content: the copy of the sources is in
    // the cache from the first run, but the host file has a new time now,
    // so the copy is made again and make sees main.c newer than the
    // version-two app the cache volume holds.
    let (out, _) = call(&env, &module, "build_and_run_twice", &src);
    assert!(
        !out.contains("version two"),
        "the step saw the first run's times and kept the stale app: {out}"
    );
    assert!(out.contains("gcc -o /out/app main.c"), "{out}");
    assert!(out.ends_with("version one\nversion one\n"), "{out}");
}

const CARGO_STAR: &str = r#"
def run(source: Directory) -> str:
    """cargo run with target/ on a cache volume."""
    return (
        container("debian:mtimes")
        .with_directory("/src", source)
        .with_mounted_cache("/src/target", cache_volume("cargo-target"))
        .with_workdir("/src")
        .with_env_variable("CARGO_HOME", "/tmp/cargo-home")
        .with_exec(["sh", "-c", "cargo build --offline 2>&1 && ./target/debug/app"])
        .stdout()
    )
"#;

fn main_rs(version: &str) -> String {
    format!("fn main() {{\n    println!(\"version {version}\");\n}}\n")
}

#[test]
fn cargo_rebuilds_a_target_dir_on_a_cache_volume_after_a_one_line_change() {
    let Some(env) = debian_env(CARGO_PACKAGES) else {
        return;
    };
    let module = env.module("cargo-mod", &[("kiln.star", CARGO_STAR)]);
    let src = env.path("cargo-src");
    write(
        &src.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    write(&src.join("src/main.rs"), &main_rs("one"));

    let (out, _) = call(&env, &module, "run", &src);
    assert!(out.contains("Compiling app"), "{out}");
    assert!(out.ends_with("version one\n"), "{out}");

    write(&src.join("src/main.rs"), &main_rs("two"));
    let (out, _) = call(&env, &module, "run", &src);
    assert!(
        out.contains("Compiling app"),
        "cargo took the old build for fresh: {out}"
    );
    assert!(out.ends_with("version two\n"), "{out}");
}

const WHEEL_STAR: &str = r#"
CHECK = """
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
for name in ("hello/__init__.py", "hello/version.py"):
    print(name, *wheel.getinfo(name).date_time)
"""

def wheel(source: Directory) -> str:
    """Builds a wheel with flit_core and prints its files' zip times."""
    return (
        container("debian:mtimes")
        .with_directory("/src", source)
        .with_new_file("/src/hello/version.py", "VERSION = '0.1.0'\n")
        .with_new_file("/check.py", CHECK)
        .with_env_variable("TZ", "UTC")
        .with_workdir("/src")
        .with_exec(["sh", "-c", "python3 -m flit_core.wheel --outdir /dist . && python3 /check.py /dist/hello-0.1.0-*.whl"])
        .stdout()
    )
"#;

#[test]
fn a_python_wheel_builds_from_copied_in_files_with_their_host_times() {
    let Some(env) = debian_env(WHEEL_PACKAGES) else {
        return;
    };
    let module = env.module("wheel-mod", &[("kiln.star", WHEEL_STAR)]);
    let src = env.path("wheel-src");
    write(
        &src.join("pyproject.toml"),
        "[build-system]\nrequires = [\"flit_core >=3.2,<4\"]\nbuild-backend = \"flit_core.buildapi\"\n\n\
         [project]\nname = \"hello\"\nversion = \"0.1.0\"\ndescription = \"A test package\"\n",
    );
    write(&src.join("hello/__init__.py"), "\"\"\"Says hello.\"\"\"\n");
    // 2021-03-04 05:06:08 UTC: even seconds, as zip keeps them.
    let touched = Command::new("touch")
        .args(["-m", "-d", "@1614834368"])
        .arg(src.join("hello/__init__.py"))
        .status()
        .unwrap();
    assert!(touched.success());

    // With every time at 1970, flit_core's zipfile.ZipInfo.from_file fails:
    // "ZIP does not support timestamps before 1980".
    let (out, _) = call(&env, &module, "wheel", &src);
    assert!(
        out.contains("hello/__init__.py 2021 3 4 5 6 8\n"),
        "the host's time did not reach the wheel: {out}"
    );
    // A file the pipeline wrote has the time it was written.
    let year: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("hello/version.py "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|y| y.parse().ok())
        .unwrap_or_else(|| panic!("no time for version.py: {out}"));
    assert!(year >= 2024, "version.py dated {year}: {out}");
}
