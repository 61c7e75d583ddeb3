//! `kiln functions`, `kiln call` and `kiln run` over real kiln.star files,
//! including the repository's examples end to end. Needs root and runc.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{privileged, text, Env};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn blog_example_runs_end_to_end_and_fails_on_broken_links_and_drift() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let blog = repo().join("examples/blog");
    let public = env.path("public");
    let run = env.kiln(&[
        "run",
        "-m",
        blog.to_str().unwrap(),
        "-o",
        public.to_str().unwrap(),
        "--progress",
        "plain",
    ]);
    assert!(run.status.success(), "{:?}", text(&run));
    let index = std::fs::read_to_string(public.join("index.html")).unwrap();
    assert!(
        index.contains("<h1>The kiln blog</h1>") && index.contains("href=\"intro.html\""),
        "{index}"
    );
    assert!(
        text(&run).1.contains("all links resolve"),
        "{:?}",
        text(&run)
    );

    let check = env.kiln(&[
        "call",
        "-m",
        blog.to_str().unwrap(),
        "check-links",
        "--source",
        blog.to_str().unwrap(),
    ]);
    assert_eq!(text(&check).0, "all links resolve\n", "{:?}", text(&check));

    // A broken link fails the run, and the error shows the failing step's output.
    let copy = env.path("blog-copy");
    std::fs::create_dir_all(&copy).unwrap();
    copy_tree(&blog, &copy);
    std::fs::write(
        copy.join("docs/intro.md"),
        "# Introduction\n\nSee [the missing page](gone.md).\n",
    )
    .unwrap();
    let broken = env.kiln(&["run", "-m", copy.to_str().unwrap(), "--progress", "plain"]);
    assert!(!broken.status.success());
    let (_, err) = text(&broken);
    assert!(
        err.contains("intro.html: broken link to gone.html"),
        "{err}"
    );
    assert!(err.contains("exited with code 1"), "{err}");

    // Drift between vendored packages and the lockfile fails the install.
    std::fs::write(copy.join("docs/intro.md"), "# Introduction\n").unwrap();
    let script = copy.join("vendor/build.sh");
    let mut tampered = std::fs::read_to_string(&script).unwrap();
    tampered.push_str("# tampered\n");
    std::fs::write(&script, tampered).unwrap();
    let drift = env.kiln(&["run", "-m", copy.to_str().unwrap(), "--progress", "plain"]);
    assert!(!drift.status.success());
    assert!(
        text(&drift).1.contains("FAILED"),
        "sha256sum names the drifted file: {:?}",
        text(&drift)
    );
}

#[test]
fn parallel_tests_example_exports_its_artifact() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let example = repo().join("examples/parallel-tests");
    let artifact = env.path("dist/calc");
    let run = env.kiln(&[
        "run",
        "-m",
        example.to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
        "--progress",
        "plain",
    ]);
    assert!(run.status.success(), "{:?}", text(&run));
    let (_, err) = text(&run);
    assert!(
        err.contains("ok   mul 4 5") && err.contains("ok   calc mul"),
        "{err}"
    );
    let calc = Command::new("sh")
        .arg(&artifact)
        .args(["add", "40", "2"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&calc.stdout), "42\n");
}

#[test]
fn functions_lists_documented_functions() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let listed = env.kiln(&[
        "functions",
        "-m",
        repo().join("examples/blog").to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&listed);
    assert!(listed.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("build ") && lines[0].contains("Build the static site"),
        "{stdout}"
    );
    assert!(stdout.contains("check-links") && stdout.contains("ci ") && stdout.contains("install"));
    assert!(
        !stdout.contains("site_builder"),
        "loaded helpers are not commands: {stdout}"
    );

    // -m defaults to the nearest kiln.star upward.
    let nested = env.module(
        "proj",
        &[
            (
                "kiln.star",
                "def hello() -> str:\n    \"\"\"Say hello.\"\"\"\n    return \"hi\"\n",
            ),
            ("sub/dir/.keep", ""),
        ],
    );
    let from_sub = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["functions"])
        .env("KILN_STORE", env.path("store"))
        .current_dir(nested.join("sub/dir"))
        .output()
        .unwrap();
    assert_eq!(text(&from_sub).0.trim(), "hello  Say hello.");
}

const TYPED: &str = r#"
def typed(source: Directory, config: File, token: Secret, name: str, count: int = 2, verbose: bool = False, tags: list[str] = []) -> str:
    """Exercise every parameter type.

    Longer description of the function.
    """
    c = (container("busybox:test")
        .with_directory("/src", source)
        .with_file("/etc/app.conf", config)
        .with_secret_variable("TOKEN", token)
        .with_exec(["sh", "-c", "echo name=" + name + " count=" + str(count) + " verbose=" + str(verbose) + " tags=" + ",".join(tags) + " files=$(ls /src | wc -l) conf=$(cat /etc/app.conf) token=$TOKEN"]))
    return c.stdout()
"#;

#[test]
fn typed_flags_help_and_errors() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module(
        "typed",
        &[
            ("kiln.star", TYPED),
            ("data/a.txt", "a"),
            ("data/b.txt", "b"),
            ("app.conf", "port=80"),
        ],
    );
    let m = module.to_str().unwrap();

    let help = env.kiln(&["call", "-m", m, "typed", "--help"]);
    let (help_text, _) = text(&help);
    assert!(help.status.success());
    for needle in [
        "Exercise every parameter type.",
        "Longer description",
        "--source",
        "--config",
        "--token",
        "--name",
        "--count",
        "--verbose",
        "--tags",
        "Directory",
        "Secret",
        "env:NAME or file:PATH",
        "int",
        "[default: 2]",
        "[required]",
        "list[str]",
    ] {
        assert!(
            help_text.contains(needle),
            "help lacks {needle:?}:\n{help_text}"
        );
    }

    let data = module.join("data");
    let conf = module.join("app.conf");
    let ok = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "call",
            "-m",
            m,
            "typed",
            "--source",
            data.to_str().unwrap(),
            "--config",
            conf.to_str().unwrap(),
            "--token",
            "env:KILN_TYPED_TOKEN",
            "--name",
            "demo",
            "--count",
            "5",
            "--verbose",
            "--tags",
            "x,y",
            "--tags",
            "z",
            "--progress",
            "quiet",
        ])
        .env("KILN_STORE", env.path("store"))
        .env("KILN_TYPED_TOKEN", "s3cret-token-value")
        .output()
        .unwrap();
    assert_eq!(
        text(&ok).0,
        "name=demo count=5 verbose=True tags=x,y,z files=2 conf=port=80 token=***\n",
        "{:?}",
        text(&ok)
    );

    let bad_int = env.kiln(&["call", "-m", m, "typed", "--count", "many"]);
    assert!(!bad_int.status.success());
    let (_, err) = text(&bad_int);
    assert!(err.contains("--count") && err.contains("int"), "{err}");

    let missing = env.kiln(&[
        "call",
        "-m",
        m,
        "typed",
        "--source",
        data.to_str().unwrap(),
        "--config",
        conf.to_str().unwrap(),
        "--name",
        "x",
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).1.contains("--token"),
        "names the missing secret flag: {:?}",
        text(&missing)
    );

    let no_path = env.kiln(&["call", "-m", m, "typed", "--source", "/no/such/dir"]);
    assert!(
        text(&no_path).1.contains("/no/such/dir"),
        "{:?}",
        text(&no_path)
    );

    let typo = env.kiln(&["call", "-m", m, "typd"]);
    assert!(!typo.status.success());
    assert!(
        text(&typo).1.contains("typed"),
        "suggests the closest function: {:?}",
        text(&typo)
    );
}

#[test]
fn syntax_errors_point_at_file_line_and_column() {
    let env = Env::empty();
    let module = env.module(
        "bad",
        &[(
            "kiln.star",
            "def ok() -> str:\n    \"\"\"Fine.\"\"\"\n    return \"x\"\n\ndef broken(:\n    pass\n",
        )],
    );
    let listed = env.kiln(&["functions", "-m", module.to_str().unwrap()]);
    assert!(!listed.status.success());
    let (_, err) = text(&listed);
    assert!(err.contains("kiln.star:5:"), "{err}");
    assert!(
        err.contains("def broken(:"),
        "shows the offending line: {err}"
    );
}

#[test]
fn second_call_reuses_the_cache_and_json_mode_is_machine_readable() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module(
        "cached",
        &[(
            "kiln.star",
            r#"
def count(source: Directory) -> str:
    """Counts its runs in a cache volume."""
    return (container("busybox:test")
        .with_mounted_cache("/count", cache_volume("runs"))
        .with_directory("/src", source)
        .with_exec(["sh", "-c", "n=$(cat /count/n 2>/dev/null || echo 0); echo $((n+1)) > /count/n; cat /src/input.txt"])
        .stdout())
"#,
        ), ("src/input.txt", "payload\n")],
    );
    let src = module.join("src");
    let args = [
        "call",
        "-m",
        module.to_str().unwrap(),
        "count",
        "--source",
        src.to_str().unwrap(),
        "--progress",
        "plain",
    ];
    assert_eq!(text(&env.kiln(&args)).0, "payload\n");
    let second = env.kiln(&args);
    assert_eq!(text(&second).0, "payload\n");
    assert_eq!(
        env.counter("runs", "n"),
        1,
        "the second call ran the step again"
    );
    assert!(text(&second).1.contains("CACHED"), "{:?}", text(&second));

    std::fs::write(src.join("input.txt"), "changed\n").unwrap();
    let json = env.kiln(&[
        "call",
        "-m",
        module.to_str().unwrap(),
        "count",
        "--source",
        src.to_str().unwrap(),
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = text(&json)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(lines.iter().any(|e| e["event"] == "started"), "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "result");
    assert_eq!(last["value"], "changed\n");
    assert_eq!(env.counter("runs", "n"), 2);
}

#[test]
fn a_failed_step_shows_command_exit_code_and_last_30_lines() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module(
        "failing",
        &[(
            "kiln.star",
            r#"
def fail() -> str:
    """Prints forty lines and fails."""
    return container("busybox:test").with_exec(["sh", "-c", "for i in $(seq 1 40); do echo line-$i; done; exit 3"]).stdout()

def no_image() -> str:
    """Uses an image that is not in the store."""
    return container("registry.example/missing:1.0").with_exec(["true"]).stdout()
"#,
        )],
    );
    let failed = env.kiln(&[
        "call",
        "-m",
        module.to_str().unwrap(),
        "fail",
        "--progress",
        "quiet",
    ]);
    assert_eq!(failed.status.code(), Some(1));
    let (_, err) = text(&failed);
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(
        err.contains("for i in $(seq 1 40)"),
        "shows the command: {err}"
    );
    assert!(
        err.contains("line-11\n") && err.contains("line-40"),
        "{err}"
    );
    assert!(!err.contains("line-10\n"), "only the last 30 lines: {err}");

    let missing = env.kiln(&[
        "call",
        "-m",
        module.to_str().unwrap(),
        "no-image",
        "--progress",
        "quiet",
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).1.contains("registry.example/missing:1.0"),
        "{:?}",
        text(&missing)
    );
}

const ENDLESS: &str =
    "def ci():\n    \"\"\"Loops.\"\"\"\n    for i in range(1000000):\n        for j in range(1000000):\n            pass\n";

#[test]
fn runaway_evaluation_stops_with_an_error_naming_the_limit() {
    let env = Env::empty();
    let looping = env.module(
        "looping",
        &[(
            "kiln.star",
            "for i in range(1000000):\n    for j in range(1000000):\n        pass\n",
        )],
    );
    let out = env
        .cmd(&["functions", "-m", looping.to_str().unwrap()])
        .env("KILN_EVAL_MAX_STEPS", "100000")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("100000 interpreter steps"), "{err}");
    assert!(err.contains("--eval-max-steps"), "{err}");
    let eating = env.module(
        "eating",
        &[("kiln.star", "X = [i for i in range(1000000000)]\n")],
    );
    let out = env.kiln(&[
        "--eval-max-memory",
        "16MiB",
        "functions",
        "-m",
        eating.to_str().unwrap(),
    ]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("16 MiB of Starlark memory"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn errors_are_printed_with_one_error_prefix() {
    let env = Env::empty();
    let broken = env.module("broken", &[("kiln.star", "def ci():\n    return (1 +\n")]);
    let out = env.kiln(&["functions", "-m", broken.to_str().unwrap()]);
    let (_, err) = text(&out);
    assert!(err.starts_with("error: Parse error"), "{err}");
    assert!(!err.contains("error: error:"), "{err}");
    assert!(err.contains("kiln.star:2:"), "{err}");
}

#[test]
fn an_interrupt_or_sigterm_stops_a_looping_evaluation() {
    let env = Env::empty();
    let looping = env.module("looping", &[("kiln.star", ENDLESS)]);
    for signal in ["INT", "TERM"] {
        let mut child = env
            .cmd(&["call", "-m", looping.to_str().unwrap(), "ci"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let it start looping.
        std::thread::sleep(Duration::from_millis(1500));
        let sent = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let sent = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if sent.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("signal {signal}: still evaluating 20 s after the signal");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(130), "signal {signal}");
    }
}
