//! `load()` of other files of the same repository.

mod common;

use std::path::PathBuf;

use common::*;
use kiln_starlark::{Error, Output};

const MAIN: &str = r#"load("lib/go.star", "go_version")

def version() -> str:
    """The Go version."""
    return go_version()
"#;

/// Calls `version` and returns its string.
fn version(repo: &Repo) -> String {
    match ok(repo.pipeline().call("version", vec![])) {
        Output::Str(s) => s,
        other => panic!("expected a string, got {other:?}"),
    }
}

fn load_error(repo: &Repo) -> String {
    match err(repo.load()) {
        Error::Load { message } => message,
        other => panic!("expected a load error, got {other:?}: {other}"),
    }
}

#[test]
fn loads_relative_to_the_loading_file() {
    let repo = Repo::new(&[
        ("kiln.star", MAIN),
        // Relative to lib/, not to the root.
        (
            "lib/go.star",
            "load(\"versions.star\", \"GO\")\nload(\"../shared/suffix.star\", \"SUFFIX\")\n\ndef go_version():\n    return GO + SUFFIX\n",
        ),
        ("lib/versions.star", "GO = \"1.22\"\n"),
        ("shared/suffix.star", "load(\"./parts/dash.star\", \"DASH\")\nSUFFIX = DASH + \"alpine\"\n"),
        ("shared/parts/dash.star", "DASH = \"-\"\n"),
    ]);
    assert_eq!(version(&repo), "1.22-alpine");
}

#[test]
fn each_file_is_evaluated_once() {
    let repo = Repo::new(&[
        (
            "kiln.star",
            "load(\"a.star\", \"A\")\nload(\"b.star\", \"B\")\n\ndef version() -> str:\n    \"\"\"V.\"\"\"\n    return A + B\n",
        ),
        ("a.star", "load(\"common.star\", \"C\")\nA = C + \"a\"\n"),
        ("b.star", "load(\"common.star\", \"C\")\nB = C + \"b\"\n"),
        ("common.star", "C = \"c\"\n"),
    ]);
    let pipeline = repo.pipeline();
    let files: Vec<PathBuf> = ["common.star", "a.star", "b.star", "kiln.star"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(pipeline.files(), files);
    assert!(matches!(ok(pipeline.call("version", vec![])), Output::Str(s) if s == "cacb"));
}

#[test]
fn missing_file_names_it_and_the_load_site() {
    let repo = Repo::new(&[("kiln.star", MAIN)]);
    let message = load_error(&repo);
    assert!(message.contains("lib/go.star does not exist"), "{message}");
    assert!(message.contains("kiln.star:1:6"), "{message}");
    assert!(
        message.contains("load(\"lib/go.star\", \"go_version\")"),
        "{message}"
    );
}

#[test]
fn missing_file_in_a_loaded_file() {
    let repo = Repo::new(&[
        ("kiln.star", MAIN),
        ("lib/go.star", "# Helpers.\nload(\"missing.star\", \"X\")\n"),
    ]);
    let message = load_error(&repo);
    assert!(
        message.contains("lib/missing.star does not exist"),
        "{message}"
    );
    assert!(message.contains("lib/go.star:2:6"), "{message}");
}

#[test]
fn escaping_the_root_is_refused() {
    let repo = Repo::new(&[("kiln.star", "load(\"../outside.star\", \"X\")\n")]);
    write(&repo.outside("outside.star"), "X = 1\n");
    let message = load_error(&repo);
    assert!(message.contains("outside the repository"), "{message}");
    assert!(message.contains("kiln.star:1:6"), "{message}");

    // Through a subdirectory and back up, still too far.
    repo.write("kiln.star", "load(\"lib/../../outside.star\", \"X\")\n");
    assert!(load_error(&repo).contains("outside the repository"));

    repo.write(
        "kiln.star",
        &format!(
            "load({:?}, \"X\")\n",
            repo.outside("outside.star").display()
        ),
    );
    let message = load_error(&repo);
    assert!(message.contains("not absolute"), "{message}");
}

#[test]
fn symlink_out_of_the_root_is_refused() {
    let repo = Repo::new(&[("kiln.star", "load(\"lib/link.star\", \"X\")\n")]);
    write(&repo.outside("outside.star"), "X = 1\n");
    std::fs::create_dir_all(repo.root().join("lib")).unwrap();
    std::os::unix::fs::symlink(
        repo.outside("outside.star"),
        repo.root().join("lib/link.star"),
    )
    .unwrap();
    let message = load_error(&repo);
    assert!(
        message.contains("lib/link.star leads outside the repository"),
        "{message}"
    );
}

#[test]
fn going_up_inside_the_root_is_fine() {
    let repo = Repo::new(&[
        ("kiln.star", MAIN),
        (
            "lib/go.star",
            "load(\"../top.star\", \"V\")\n\ndef go_version():\n    return V\n",
        ),
        ("top.star", "V = \"top\"\n"),
    ]);
    assert_eq!(version(&repo), "top");
}

#[test]
fn cycles_are_detected() {
    let repo = Repo::new(&[
        ("kiln.star", "load(\"lib/a.star\", \"A\")\n"),
        ("lib/a.star", "load(\"b.star\", \"B\")\nA = B\n"),
        ("lib/b.star", "load(\"a.star\", \"A\")\nB = A\n"),
    ]);
    let message = load_error(&repo);
    assert!(
        message.contains("load cycle: lib/a.star -> lib/b.star -> lib/a.star"),
        "{message}"
    );
    assert!(message.contains("lib/b.star:1:6"), "{message}");

    // Back to kiln.star itself.
    repo.write("lib/a.star", "load(\"../kiln.star\", \"X\")\nA = 1\n");
    let message = load_error(&repo);
    assert!(
        message.contains("load cycle: kiln.star -> lib/a.star -> kiln.star"),
        "{message}"
    );
}

#[test]
fn loaded_names_are_not_reexported() {
    let repo = Repo::new(&[
        ("kiln.star", "load(\"lib/a.star\", \"B\")\n"),
        ("lib/a.star", "load(\"b.star\", \"B\")\n"),
        ("lib/b.star", "B = 1\n"),
    ]);
    let e = err(repo.load());
    assert!(e.to_string().contains("B"), "{e}");
}

#[test]
fn loaded_file_errors_point_into_that_file() {
    let repo = Repo::new(&[
        ("kiln.star", MAIN),
        (
            "lib/go.star",
            "def go_version():\n    major = 1\n    return major + \".22\"\n",
        ),
    ]);
    let e = err(repo.pipeline().call("version", vec![]));
    let Error::Eval { message } = &e else {
        panic!("expected an evaluation error, got {e:?}");
    };
    assert!(message.contains("lib/go.star:3:12"), "{message}");
    assert!(message.contains("return major + \".22\""), "{message}");
    assert!(message.contains("kiln.star:5, in version"), "{message}");
}
