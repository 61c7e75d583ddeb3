//! Step output as `--progress plain` and `--json` show it: whole lines
//! however the step wrote them, a cap on a line's length, the last line
//! without a newline; figures named with their units; and a `result` event
//! at the end of every `--json` run, a cancelled one included. Tests that
//! run containers need root and runc.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{privileged, text, Env};
use serde_json::Value;

/// Steps that write output the way real tools do, one per concern; they
/// run in parallel. `mode` is part of every command, so the plain and the
/// JSON run each run the steps instead of finding them cached.
const WRITERS: &str = r#"
def _step(marker, mode, script):
    return container("busybox:test").with_exec(["sh", "-c", ": " + marker + " " + mode + "; " + script])

def writers(mode: str) -> list:
    """Steps that write lines in pieces."""
    return [
        # npm writes "npm" and the rest of its line in separate writes.
        _step("pieces", mode, "printf 'npm' >&2; sleep 0.3; printf ' ERR! code EUSAGE\\n' >&2; printf 'one\\ntwo\\n'"),
        # A line longer than the 16 KiB cap, in one write or many.
        _step("long", mode, "head -c 40000 /dev/zero | tr '\\0' a; echo"),
        # A prompt that waits longer than a line may.
        _step("prompt", mode, "printf 'Downloading'; sleep 2.5; echo ' done'"),
        # The last line has no newline.
        _step("unended", mode, "echo first; printf 'no newline at the end'"),
    ]
"#;

const CAP: usize = 16 << 10;

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// The step whose name holds `marker`, from its `started` event.
fn step_of(events: &[Value], marker: &str) -> u64 {
    events
        .iter()
        .find(|e| e["event"] == "started" && e["name"].as_str().unwrap_or("").contains(marker))
        .and_then(|e| e["step"].as_u64())
        .unwrap_or_else(|| panic!("no step {marker}: {events:?}"))
}

/// The `data` of a step's output events on one stream, in order.
fn outputs(events: &[Value], step: u64, stream: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "output" && e["step"] == step && e["stream"] == stream)
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The output lines `--progress plain` printed for a step's stream.
fn plain_lines(stderr: &str, step: u64, stream: &str) -> Vec<String> {
    let prefix = match stream {
        "stdout" => format!("#{step} | "),
        _ => format!("#{step} stderr | "),
    };
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[test]
fn plain_and_json_show_whole_lines_however_the_step_wrote_them() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("writers", &[("kiln.star", WRITERS)]);
    let module = module.to_str().unwrap();

    let json = env.kiln(&["call", "-m", module, "writers", "--mode", "json", "--json"]);
    assert!(json.status.success(), "{:?}", text(&json));
    let events = events(&text(&json).0);

    let pieces = step_of(&events, "pieces");
    assert_eq!(
        outputs(&events, pieces, "stderr"),
        ["npm ERR! code EUSAGE\n"],
        "a line written in two writes 0.3 s apart is one event"
    );
    assert_eq!(
        outputs(&events, pieces, "stdout"),
        ["one\n", "two\n"],
        "lines written in one write are an event each"
    );

    let long = step_of(&events, "long");
    let pieces_of_long = outputs(&events, long, "stdout");
    assert_eq!(
        pieces_of_long.iter().map(String::len).collect::<Vec<_>>(),
        [CAP, CAP, 40_000 - 2 * CAP + 1],
        "a 40000-byte line is cut at the 16 KiB cap"
    );
    assert_eq!(pieces_of_long.concat(), format!("{}\n", "a".repeat(40_000)));

    let prompt = step_of(&events, "prompt");
    assert_eq!(
        outputs(&events, prompt, "stdout"),
        ["Downloading", " done\n"],
        "a line that waits 2.5 s for its end is shown without it, then continued"
    );

    let unended = step_of(&events, "unended");
    assert_eq!(
        outputs(&events, unended, "stdout"),
        ["first\n", "no newline at the end"]
    );
    // The last line goes out before its step's end.
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    let last_line = at(&|e| e["data"] == "no newline at the end");
    let finished = at(&|e| e["event"] == "finished" && e["step"] == unended);
    assert!(last_line < finished, "{events:?}");
    assert_eq!(events.last().unwrap()["event"], "result");
    assert_eq!(events.last().unwrap()["ok"], true);

    let plain = env.kiln(&[
        "call",
        "-m",
        module,
        "writers",
        "--mode",
        "plain",
        "--progress",
        "plain",
    ]);
    let (_, stderr) = text(&plain);
    assert!(plain.status.success(), "{stderr}");
    // Step numbers are those of this run; its steps start in the same order.
    let number = |marker: &str| -> u64 {
        stderr
            .lines()
            .find(|l| l.starts_with('#') && l.contains(&format!(": {marker} plain")))
            .and_then(|l| l[1..].split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no step {marker}: {stderr}"))
    };
    let pieces = number("pieces");
    assert_eq!(
        plain_lines(&stderr, pieces, "stderr"),
        ["npm ERR! code EUSAGE"],
        "{stderr}"
    );
    assert_eq!(plain_lines(&stderr, pieces, "stdout"), ["one", "two"]);
    let long = plain_lines(&stderr, number("long"), "stdout");
    assert_eq!(
        long.iter().map(String::len).collect::<Vec<_>>(),
        [CAP, CAP, 40_000 - 2 * CAP]
    );
    assert_eq!(
        plain_lines(&stderr, number("prompt"), "stdout"),
        ["Downloading", " done"]
    );
    assert_eq!(
        plain_lines(&stderr, number("unended"), "stdout"),
        ["first", "no newline at the end"]
    );
}

/// Every number in an event is an id, a code, or named with its unit.
fn unitless_figures(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Number(_) => {
            let field = path.rsplit('.').next().unwrap_or(path);
            // An id and codes; everything else says its unit.
            let named = ["step", "exit_code", "signal"].contains(&field)
                || ["_ms", "_s", "_bytes"]
                    .iter()
                    .any(|unit| field.ends_with(unit));
            if !named {
                found.push(path.to_owned());
            }
        }
        Value::Object(fields) => {
            for (name, v) in fields {
                unitless_figures(v, &format!("{path}.{name}"), found);
            }
        }
        Value::Array(items) => {
            for v in items {
                unitless_figures(v, path, found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_figure_in_the_json_events_names_its_unit() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module(
        "units",
        &[(
            "kiln.star",
            r#"
def ci(source: Directory) -> str:
    """One step that succeeds, one that fails."""
    return (
        container("busybox:test")
        .with_exec(["sh", "-c", "echo fine"])
        .with_exec(["sh", "-c", "echo broken >&2; exit 3"])
        .stdout()
    )
"#,
        )],
    );
    let run = env.kiln(&["run", "-m", module.to_str().unwrap(), "--json"]);
    assert_eq!(run.status.code(), Some(1), "{:?}", text(&run));
    let events = events(&text(&run).0);
    let finished: Vec<&Value> = events.iter().filter(|e| e["event"] == "finished").collect();
    let execs = finished
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("exec ")));
    assert_eq!(execs.count(), 2, "{events:?}");
    for event in &finished {
        let ms = event["duration_ms"].as_f64();
        assert!(ms.is_some_and(|ms| ms > 0.0), "{event}");
        assert!(event.get("duration").is_none(), "{event}");
    }
    let mut found = Vec::new();
    for event in &events {
        let kind = event["event"].as_str().unwrap_or("?");
        unitless_figures(event, kind, &mut found);
    }
    assert!(found.is_empty(), "figures without a unit: {found:?}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "result", "{events:?}");
    assert_eq!(last["ok"], false);
}

#[test]
fn json_of_a_cancelled_run_ends_with_a_result_event() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    for (signal, marker) in [("INT", "64.25"), ("TERM", "64.75")] {
        let module = env.module(
            &format!("cancelled-{signal}"),
            &[(
                "kiln.star",
                &format!(
                    r#"
def ci(source: Directory) -> str:
    """Sleeps long enough to be interrupted."""
    return container("busybox:test").with_exec(["sh", "-c", "echo begin; sleep {marker}"]).stdout()
"#
                ),
            )],
        );
        let child = env
            .cmd(&["run", "-m", module.to_str().unwrap(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kiln_testkit::sleeper_alive(marker) {
            assert!(
                Instant::now() < deadline,
                "SIG{signal}: the step never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(130), "SIG{signal}: {stderr}");
        let events = events(&stdout);
        let last = events.last().unwrap();
        assert_eq!(last["event"], "result", "SIG{signal}: {stdout}");
        assert_eq!(last["ok"], false, "{last}");
        let error = last["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("cancelled") && error.contains(&format!("SIG{signal}")),
            "{last}"
        );
        let cancelled: Vec<&str> = last["cancelled"]
            .as_array()
            .map(|steps| steps.iter().filter_map(|s| s["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(cancelled.len(), 1, "{last}");
        assert!(cancelled[0].contains(marker), "{last}");
        // The step's output came before, as a line of its own.
        let step = step_of(&events, marker);
        assert_eq!(outputs(&events, step, "stdout"), ["begin\n"], "{stdout}");
        assert!(!kiln_testkit::sleeper_alive(marker));
    }
}

#[test]
fn json_runs_that_fail_before_running_end_with_a_result_event() {
    let env = Env::empty();
    let broken = env.module("broken", &[("kiln.star", "def ci(:\n")]);
    let fine = env.module(
        "fine",
        &[(
            "kiln.star",
            "def ci() -> str:\n    \"\"\"Says hi.\"\"\"\n    return \"hi\"\n",
        )],
    );
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "a syntax error",
            vec!["run", "-m", broken.to_str().unwrap(), "--json"],
        ),
        (
            "--locked without kiln.lock",
            vec!["run", "-m", fine.to_str().unwrap(), "--locked", "--json"],
        ),
        (
            "an unknown flag, --json after the function",
            vec![
                "call",
                "-m",
                fine.to_str().unwrap(),
                "ci",
                "--json",
                "--nope",
            ],
        ),
        (
            "an unknown function",
            vec!["call", "-m", fine.to_str().unwrap(), "cj", "--json"],
        ),
    ];
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    for (case, args) in cases {
        let out = env.kiln(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        let last = events(&stdout)
            .pop()
            .unwrap_or_else(|| panic!("{case}: nothing on stdout; stderr: {stderr}"));
        assert_eq!(last["event"], "result", "{case}: {stdout}");
        assert_eq!(last["ok"], false, "{case}: {stdout}");
        assert!(
            last["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{case}: {last}"
        );
        assert_eq!(
            stdout.lines().count(),
            1,
            "{case}: one result only: {stdout}"
        );
        results.insert(case, last);
    }
    assert!(
        results["--locked without kiln.lock"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("kiln.lock"),
        "{results:?}"
    );
    // Without --json nothing is printed on stdout.
    let out = env.kiln(&["run", "-m", broken.to_str().unwrap()]);
    assert!(out.stdout.is_empty(), "{:?}", text(&out));
}
