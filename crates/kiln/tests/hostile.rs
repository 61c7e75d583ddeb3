//! The hostile corpus in `tests/hostile/` at the repository root, run as a
//! user of kiln would meet it: pipelines that try to hold a core, eat the
//! host's memory, crash the interpreter or read outside the repository; and
//! step scripts that print a secret in the forms real tools print. Every
//! pipeline must be refused with a clear error, and no form of a secret may
//! reach the terminal, the `--json` events, a cached replay or the store.
//! Needs root and runc for the secrets part (see scripts/deps.sh).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;

use common::{privileged, text, Env};

const IMAGE: &str = "busybox:test";

fn corpus(kind: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/hostile")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "the {kind} corpus has {} cases",
        files.len()
    );
    files
}

/// `# key: value` lines at the top of a corpus file.
fn header(source: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(source)
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_owned))
}

#[test]
fn every_hostile_pipeline_is_refused_with_a_clear_error() {
    let env = Env::empty();
    let cases = corpus("pipelines", "star");
    let mut refused = 0;
    for case in &cases {
        let source = std::fs::read(case).unwrap();
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let expect = header(&source, "expect").unwrap_or_else(|| panic!("{name}: no # expect:"));
        let run = header(&source, "run").unwrap_or_else(|| "functions".into());
        let module = env.path(&format!("pipelines/{name}"));
        std::fs::create_dir_all(&module).unwrap();
        std::fs::write(module.join("kiln.star"), &source).unwrap();
        // Tight limits keep the suite quick; a case may set its own.
        let flags = header(&source, "flags")
            .unwrap_or_else(|| "--eval-max-steps 2000000 --eval-max-memory 64MiB".into());
        let mut args: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
        let mut words = run.split_whitespace().map(str::to_owned);
        args.extend(words.next());
        args.extend(["-m".to_owned(), module.to_string_lossy().into_owned()]);
        args.extend(words);
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.kiln(&args);
        let took = started.elapsed();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&expect),
            "{name}: expected {expect:?} in:\n{stderr}"
        );
        assert!(stderr.starts_with("error: "), "{name}: {stderr}");
        for crash in ["panicked", "overflowed", "backtrace", "error: error:"] {
            assert!(!stderr.contains(crash), "{name}: {stderr}");
        }
        assert!(took < Duration::from_secs(60), "{name} took {took:?}");
        refused += 1;
    }
    eprintln!(
        "hostile pipelines: {} tried, {refused} refused",
        cases.len()
    );
}

/// A secret no encoding of which occurs by chance: JSON-hostile characters,
/// and long enough (100 bytes) that `base64` wraps it.
const SECRET: &str =
    "Zq7\"Kx\\wP/m4Tz8-y&e>Lp s3cr3t:A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v2W3x4Y5z6+deploy=ok%";
const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBkLWF0ZXN0LWtleS1mb3Ita2lsbi1ob3N0aWxlLWNvcnB1cwAAAJiTZXN0
a2V5MDEAAAALc3NoLWVkMjU1MTkAAAAgZC1hdGVzdC1rZXktZm9yLWtpbG4taG9zdGlsZQ
-----END OPENSSH PRIVATE KEY-----";

/// Lines of what a script prints when nothing masks it: the forms that
/// must not appear anywhere.
fn leaked_forms(reference: &Output) -> Vec<String> {
    let all = [&reference.stdout[..], &reference.stderr[..]].concat();
    String::from_utf8_lossy(&all)
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_owned())
        .filter(|l| l.len() >= 12 && !l.starts_with("-----"))
        .collect()
}

fn events_text(json_lines: &[u8]) -> String {
    String::from_utf8_lossy(json_lines)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["data"].as_str().map(str::to_owned))
        .collect()
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    out.push((path.clone(), std::fs::read(&path).unwrap_or_default()))
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn no_form_of_a_secret_reaches_output_events_replay_or_store() {
    if !privileged() {
        return;
    }
    let cases = corpus("secrets", "sh");
    // Where the unmasked forms are computed (the values as plain
    // variables), apart from the store under test.
    let reference = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let mut leaked = Vec::new();
    for case in &cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let script = std::fs::read_to_string(case).unwrap();
        let plain = reference.kiln(&[
            "exec",
            IMAGE,
            "-e",
            &format!("SECRET={SECRET}"),
            "-e",
            &format!("PEM={PEM}"),
            "--progress",
            "quiet",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        assert!(plain.status.success(), "{name}: {:?}", text(&plain));
        let forms = leaked_forms(&plain);
        assert!(!forms.is_empty(), "{name} prints nothing to look for");

        let secret_args = [
            "--secret-env",
            "SECRET=env:HOSTILE_SECRET",
            "--secret-env",
            "PEM=env:HOSTILE_PEM",
        ];
        let run = |extra: &[&str]| {
            let mut args = vec!["exec", IMAGE];
            args.extend(secret_args);
            args.extend(extra);
            args.extend(["--", "sh", "-c", &script]);
            env.cmd(&args)
                .env("HOSTILE_SECRET", SECRET)
                .env("HOSTILE_PEM", PEM)
                .output()
                .unwrap()
        };
        let json = run(&["--progress", "json"]);
        assert!(json.status.success(), "{name}: {:?}", text(&json));
        let replay = run(&["--replay-cached", "--progress", "plain"]);
        // In JSON mode the events are the lines of stdout.
        let seen = [
            ("stdout", String::from_utf8_lossy(&json.stdout).into_owned()),
            ("stderr", String::from_utf8_lossy(&json.stderr).into_owned()),
            ("--json events", events_text(&json.stdout)),
            (
                "cached replay",
                String::from_utf8_lossy(&replay.stderr).into_owned(),
            ),
            (
                "cached stdout",
                String::from_utf8_lossy(&replay.stdout).into_owned(),
            ),
        ];
        for (place, text) in &seen {
            for form in &forms {
                if text.contains(form.as_str()) {
                    leaked.push(format!("{name}: {form:?} in the {place}"));
                }
            }
        }
        let masked = seen.iter().any(|(_, t)| t.contains("***"));
        assert!(masked, "{name}: nothing was masked: {seen:?}");
    }
    // And nothing in the store: blobs, cache records, layers.
    for (path, bytes) in files_under(&env.store()) {
        let content = String::from_utf8_lossy(&bytes);
        for (name, needle) in [
            ("the secret", SECRET),
            ("the key", PEM.lines().nth(1).unwrap()),
        ] {
            if content.contains(needle) {
                leaked.push(format!("{name} in {}", path.display()));
            }
        }
    }
    eprintln!(
        "hostile secret forms: {} tried, {} leaked",
        cases.len(),
        leaked.len()
    );
    assert!(leaked.is_empty(), "{leaked:#?}");
}
