//! Step limits end to end: `with_exec(..., memory/timeout)`, `with_limits`,
//! `with_ulimit`, `with_hostname`, and the `--memory`/`--step-timeout`
//! engine defaults, with how a step ended in the failure and the JSON
//! events. Needs root and runc.

use std::time::{Duration, Instant};

mod common;

use common::{privileged, text, Env};

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    text(out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

const PIPELINE: &str = r#"
def hog() -> str:
    """Allocates 128 MiB under a 32 MiB limit."""
    return (container("busybox:test")
        .with_exec(["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"], memory = "32m")
        .stdout())

def slow(limit: str = "1s") -> str:
    """Sleeps past its timeout."""
    return (container("busybox:test")
        .with_exec(["sh", "-c", "echo sleeping; sleep 60"], timeout = limit)
        .stdout())

def counted() -> str:
    """A step whose limits change between calls: still one run."""
    return (container("busybox:test")
        .with_limits(memory = "256m", cpus = 1, pids = 100)
        .with_mounted_cache("/count", cache_volume("runs"))
        .with_exec(["sh", "-c", "n=$(cat /count/n 2>/dev/null || echo 0); echo $((n+1)) > /count/n; echo ran"],
                   timeout = "10m")
        .stdout())

def counted_again() -> str:
    """The same step as counted() with other limits."""
    return (container("busybox:test")
        .with_limits(memory = "512m")
        .with_mounted_cache("/count", cache_volume("runs"))
        .with_exec(["sh", "-c", "n=$(cat /count/n 2>/dev/null || echo 0); echo $((n+1)) > /count/n; echo ran"],
                   timeout = 600)
        .stdout())

def identity() -> str:
    """ulimits and the hostname a step sees."""
    return (container("busybox:test")
        .with_ulimit("nofile", 4096, hard = 8192)
        .with_hostname("builder")
        .with_exec(["sh", "-c", "ulimit -n; ulimit -Hn; hostname; ping -c 1 -W 2 builder >/dev/null && echo resolves"])
        .stdout())

def default_name() -> str:
    """The hostname of a step that sets none."""
    return container("busybox:test").with_exec(["hostname"]).stdout()

def unlimited_hog() -> str:
    """128 MiB with no limit in the pipeline."""
    return (container("busybox:test")
        .with_exec(["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"])
        .stdout())
"#;

#[test]
fn a_step_over_its_memory_limit_fails_as_oom_killed() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("limits", &[("kiln.star", PIPELINE)]);
    let m = module.to_str().unwrap();
    let out = env.kiln(&["call", "-m", m, "hog", "--progress", "plain"]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("ran out of memory") && err.contains("memory limit of 32 MiB"),
        "{err}"
    );

    let out = env.kiln(&["call", "-m", m, "hog", "--json"]);
    let events = json_lines(&out);
    let failed = events
        .iter()
        .find(|e| e["event"] == "finished" && e["outcome"] == "failed")
        .unwrap_or_else(|| panic!("no failed step: {events:?}"));
    assert_eq!(failed["ending"]["reason"], "oom_killed", "{failed}");
    assert_eq!(failed["ending"]["memory_limit_bytes"], 32 << 20, "{failed}");
    assert_eq!(events.last().unwrap()["event"], "result");

    // The engine default applies to a step that sets no limit, and the
    // pipeline's own limit wins over it.
    let out = env.kiln(&["call", "--memory", "48m", "-m", m, "unlimited_hog"]);
    assert!(
        text(&out).1.contains("memory limit of 48 MiB"),
        "{:?}",
        text(&out)
    );
    let out = env.kiln(&["call", "-m", m, "unlimited_hog"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = env.kiln(&["call", "--memory", "lots", "-m", m, "unlimited_hog"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("memory size \"lots\""),
        "{:?}",
        text(&out)
    );
}

#[test]
fn a_step_past_its_timeout_is_killed_and_says_so() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("limits", &[("kiln.star", PIPELINE)]);
    let m = module.to_str().unwrap();
    let start = Instant::now();
    let out = env.kiln(&["call", "-m", m, "slow", "--json"]);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(!out.status.success());
    let events = json_lines(&out);
    let failed = events
        .iter()
        .find(|e| e["event"] == "finished" && e["outcome"] == "failed")
        .unwrap_or_else(|| panic!("no failed step: {events:?}"));
    assert_eq!(failed["ending"]["reason"], "timed_out", "{failed}");
    assert_eq!(failed["ending"]["timeout_s"], 1.0, "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 1 s"),
        "{failed}"
    );

    let out = env.kiln(&["call", "-m", m, "slow", "--limit", "soon"]);
    assert!(
        text(&out).1.contains("duration \"soon\""),
        "{:?}",
        text(&out)
    );

    // kiln's own --timeout bounds the whole run, whatever the steps allow.
    let start = Instant::now();
    let out = env.kiln(&[
        "call",
        "--timeout",
        "1s",
        "--json",
        "-m",
        m,
        "slow",
        "--limit",
        "60s",
    ]);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(124), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("timed out after 1 s (--timeout)"),
        "{:?}",
        text(&out)
    );
    let events = json_lines(&out);
    let result = events.last().unwrap();
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["timeout_s"], 1.0, "{result}");
    assert_eq!(
        result["cancelled"].as_array().map(Vec::len),
        Some(1),
        "{result}"
    );

    // --step-timeout is the default for steps that set none.
    let out = env.kiln(&[
        "exec",
        "--step-timeout",
        "500ms",
        "busybox:test",
        "--",
        "sleep",
        "60",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("timed out after 0.5 s"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn limits_are_not_part_of_the_key() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("limits", &[("kiln.star", PIPELINE)]);
    let m = module.to_str().unwrap();
    for function in ["counted", "counted_again"] {
        let out = env.kiln(&["call", "-m", m, function]);
        assert_eq!(text(&out).0, "ran\n", "{:?}", text(&out));
    }
    assert_eq!(env.counter("runs", "n"), 1, "other limits re-ran the step");
}

#[test]
fn ulimits_and_hostname_reach_the_step() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("limits", &[("kiln.star", PIPELINE)]);
    let m = module.to_str().unwrap();
    let out = env.kiln(&["call", "-m", m, "identity"]);
    assert_eq!(
        text(&out).0,
        "4096\n8192\nbuilder\nresolves\n",
        "{:?}",
        text(&out)
    );
    let out = env.kiln(&["call", "-m", m, "default_name"]);
    assert_eq!(text(&out).0, "kiln\n", "{:?}", text(&out));

    let bad = env.module(
        "bad",
        &[(
            "kiln.star",
            "def f() -> str:\n    \"\"\"Bad.\"\"\"\n    return container(\"busybox:test\").with_ulimit(\"files\", 1).stdout()\n",
        )],
    );
    let out = env.kiln(&["call", "-m", bad.to_str().unwrap(), "f"]);
    assert!(
        text(&out).1.contains("unknown ulimit \"files\""),
        "{:?}",
        text(&out)
    );
}
