//! The `kiln` binary as users run it: several processes on one store, a
//! process killed mid-step, image and cache commands, secrets on the
//! command line. Needs root and runc (see scripts/deps.sh).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "busybox:test";

mod common;

use common::{bump, privileged, text, Env};

#[test]
fn image_ls_and_cache_commands() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Zstd);
    let (ls, _) = text(&env.kiln(&["image", "ls"]));
    assert!(
        ls.contains("busybox:test") && ls.contains("sha256:"),
        "{ls}"
    );
    let json = env.kiln(&["image", "ls", "--json"]);
    let line: serde_json::Value =
        serde_json::from_slice(json.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(line["size"].as_u64().unwrap() > 100_000);

    let run = env.kiln(&["exec", IMAGE, "--", "sh", "-c", "echo hi > /made"]);
    assert!(run.status.success(), "{:?}", text(&run));
    let du: serde_json::Value =
        serde_json::from_slice(&env.kiln(&["cache", "du", "--json"]).stdout).unwrap();
    assert!(du["layers"]["entries"].as_u64().unwrap() >= 2, "{du}");
    assert!(du["action_cache"]["entries"].as_u64().unwrap() >= 1, "{du}");

    let refused = env.kiln(&["cache", "prune"]);
    assert!(
        !refused.status.success(),
        "prune with no limit must say what it needs"
    );
    let pruned = env.kiln(&["cache", "prune", "--keep-bytes", "0"]);
    assert!(pruned.status.success(), "{:?}", text(&pruned));
    let du: serde_json::Value =
        serde_json::from_slice(&env.kiln(&["cache", "du", "--json"]).stdout).unwrap();
    assert_eq!(du["action_cache"]["entries"], 0, "{du}");
    assert!(
        du["blobs"]["entries"].as_u64().unwrap() >= 2,
        "the tagged image survives: {du}"
    );
    // The image still runs after the prune: its layers are unpacked again.
    let again = env.kiln(&["exec", IMAGE, "--", "echo", "still works"]);
    assert_eq!(text(&again).0, "still works\n", "{:?}", text(&again));

    let all = env.kiln(&["cache", "prune", "--all"]);
    assert!(all.status.success());
    let (ls, _) = text(&env.kiln(&["image", "ls"]));
    assert!(!ls.contains("busybox:test"), "{ls}");
}

#[test]
fn help_explains_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["exec", "image", "cache", "--store"] {
        assert!(help.contains(word), "{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["cache", "prune", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--keep-bytes") && help.contains("--older-than") && help.contains("--all"),
        "{help}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["call", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("Usage: kiln call"),
        "{help}"
    );
    assert!(
        help.contains("--progress") && help.contains("--module"),
        "{help}"
    );
}

#[test]
fn two_processes_share_one_store() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Zstd);
    let script = format!("{}; sleep 1; echo shared result", bump("same"));
    let spawn = |script: &str| {
        env.cmd(&[
            "exec",
            IMAGE,
            "--cache",
            "count:/count",
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let first = spawn(&script);
    let second = spawn(&script);
    let other = spawn(&format!("{}; echo other result", bump("other")));
    for (child, expected) in [
        (first, "shared result\n"),
        (second, "shared result\n"),
        (other, "other result\n"),
    ] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        assert_eq!(text(&out).0, expected);
    }
    // Both processes may have run the shared step; either way the store holds
    // one consistent result and a third process runs nothing.
    let ran = env.counter("count", "same");
    assert!((1..=2).contains(&ran), "{ran}");
    let third = env.kiln(&[
        "exec",
        IMAGE,
        "--cache",
        "count:/count",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(text(&third).0, "shared result\n");
    assert!(text(&third).1.contains("CACHED"), "{:?}", text(&third));
    assert_eq!(env.counter("count", "same"), ran);
}

fn mounts_under(path: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(path.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

fn runc_containers(store: &Path) -> String {
    kiln_testkit::runtime_containers(&common::runtime(), &store.join("runc")).join("\n")
}

#[test]
fn a_process_killed_mid_step_leaves_a_usable_store() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Zstd);
    let script = format!(
        "{}; echo started; sleep 30; echo finished > /result",
        bump("slow")
    );
    let mut child = env
        .cmd(&[
            "exec",
            IMAGE,
            "--cache",
            "count:/count",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.counter("count", "slow") == 0 {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();

    // The next process cleans up after the dead one, and nothing half-done
    // is trusted: the step runs again, to completion this time.
    let quick = script.replace("sleep 30", "true");
    let next = env.kiln(&[
        "exec",
        IMAGE,
        "--cache",
        "count:/count",
        "--",
        "sh",
        "-c",
        &quick,
    ]);
    assert!(next.status.success(), "{:?}", text(&next));
    assert_eq!(env.counter("count", "slow"), 2);
    assert!(
        runc_containers(&env.store()).is_empty(),
        "a killed step's container is removed"
    );
    assert!(
        mounts_under(&env.store()).is_empty(),
        "{:?}",
        mounts_under(&env.store())
    );
    let tmp_left: Vec<_> = std::fs::read_dir(env.store().join("tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        tmp_left.is_empty(),
        "staging of the killed process is removed: {tmp_left:?}"
    );
    let warm = env.kiln(&[
        "exec",
        IMAGE,
        "--cache",
        "count:/count",
        "--",
        "sh",
        "-c",
        &quick,
    ]);
    assert!(text(&warm).1.contains("CACHED"), "{:?}", text(&warm));
    assert_eq!(env.counter("count", "slow"), 2);
}

#[test]
fn secrets_from_the_command_line_never_reach_output_or_store() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Zstd);
    let secret = "hunter2-Correct-Horse";
    let out = env
        .cmd(&[
            "exec",
            IMAGE,
            "--secret-env",
            "TOKEN=env:KILN_TEST_TOKEN",
            "--secret-file",
            "/run/secrets/token=env:KILN_TEST_TOKEN",
            "--",
            "sh",
            "-c",
            "echo token=$TOKEN; cat /run/secrets/token; printf %s \"$TOKEN\" | base64; echo $TOKEN >&2",
        ])
        .env("KILN_TEST_TOKEN", secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("token=***"), "{stdout}");
    for leaked in [&stdout, &stderr] {
        assert!(!leaked.contains(secret), "secret printed: {leaked}");
        assert!(
            !leaked.contains("aHVudGVyMi1Db3JyZWN0LUhvcnNl"),
            "base64 form printed: {leaked}"
        );
    }
    // Nothing in the store holds the value: not a blob, a layer or a cache record.
    let needle = secret.as_bytes();
    for entry in kiln_testkit::files_under(&env.store()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "secret found in {}",
            entry.display()
        );
    }
    let missing = env.kiln(&[
        "exec",
        IMAGE,
        "--secret-env",
        "T=env:KILN_NOT_SET_ANYWHERE",
        "--",
        "true",
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).1.contains("KILN_NOT_SET_ANYWHERE"),
        "{:?}",
        text(&missing)
    );
}

#[test]
fn ctrl_c_stops_the_running_step_and_exits_130() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module(
        "interrupted",
        &[(
            "kiln.star",
            r#"
def ci(source: Directory) -> str:
    """Sleeps long enough to be interrupted."""
    return container("busybox:test").with_exec(["sh", "-c", "echo begin; sleep 61.5"]).stdout()
"#,
        )],
    );
    let mut child = env
        .cmd(&["run", "-m", module.to_str().unwrap(), "--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kiln_testkit::sleeper_alive("61.5") {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = Instant::now();
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    let took = interrupted.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        !kiln_testkit::sleeper_alive("61.5"),
        "the step's process is gone"
    );
    assert!(
        runc_containers(&env.store()).is_empty(),
        "no container outlives kiln"
    );
    assert!(mounts_under(&env.store()).is_empty());
}

#[test]
fn kiln_exec_kills_its_container_on_sigint_and_sigterm() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    for (signal, marker) in [("INT", "62.25"), ("TERM", "62.75")] {
        let mut child = env
            .cmd(&["exec", IMAGE, "--", "sh", "-c", &format!("sleep {marker}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kiln_testkit::sleeper_alive(marker) {
            assert!(Instant::now() < deadline, "the container never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = Instant::now();
        let pid = child.id().to_string();
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        let took = sent.elapsed();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(130), "SIG{signal}: {stderr}");
        assert!(took < Duration::from_secs(5), "SIG{signal} took {took:?}");
        assert!(
            !kiln_testkit::sleeper_alive(marker),
            "SIG{signal}: the container's process outlived kiln exec"
        );
        assert!(
            runc_containers(&env.store()).is_empty(),
            "SIG{signal}: no container outlives kiln exec"
        );
    }
}

/// The peak resident memory of a running process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_step_printing_200_mb_runs_in_bounded_memory_and_keeps_what_the_limit_allows() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    // 200 MB of output, then a pause so the peak can be read before exit.
    let script = "head -c 200000000 /dev/zero | tr '\\0' x | fold -w 100; sleep 1";
    let mut child = env
        .cmd(&[
            "exec",
            IMAGE,
            "--progress",
            "plain",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("KILN_STEP_OUTPUT_LIMIT", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut kept).unwrap();
        kept
    });
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "kiln exec did not finish");
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept = reader.join().unwrap();
    eprintln!("peak RSS {} MiB for 200 MB of output", peak / 1024);
    assert!(peak > 0, "the peak was never read");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB, over 64 MiB");
    // The result keeps 1,000,000 bytes and says where it stopped.
    let text = String::from_utf8_lossy(&kept);
    assert!(kept.len() < 1_001_000, "{} bytes kept", kept.len());
    assert!(
        text.contains("KILN_STEP_OUTPUT_LIMIT"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
}
