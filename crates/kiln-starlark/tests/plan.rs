//! Finding the images a pipeline uses without running it (`kiln lock`).

mod common;

use common::*;
use kiln_engine::{Engine, EngineOptions};
use kiln_starlark::Pipeline;

fn plan_engine(repo: &Repo) -> Engine {
    Engine::open(EngineOptions {
        store: repo.store(),
        plan_only: true,
        ..EngineOptions::default()
    })
    .expect("open engine")
}

#[test]
fn every_function_is_evaluated_with_placeholders_and_nothing_runs() {
    let repo = Repo::new(&[
        (
            "kiln.star",
            r#"
load("lib/base.star", "base")

def build(source: Directory, token: Secret, version: str, debug: bool = False) -> Container:
    """Builds."""
    image = "golang:" + (version or "1.22")
    return (
        container(image)
        .with_directory("/src", source, include = ["go.mod", "cmd/"])
        .with_directory("/docs", source.directory("docs"))
        .with_secret_variable("TOKEN", token)
        .with_exec(["go", "build"])
    )

def test(count: int) -> str:
    """Solves something itself: evaluation stops there."""
    out = base().with_exec(["true"]).stdout()
    return container("never-reached-computed:" + str(count)).stdout()

def _private() -> Container:
    return container("private:1")
"#,
        ),
        (
            "lib/base.star",
            "def base():\n    return container(\"alpine:3.20\")\n",
        ),
    ]);
    let engine = plan_engine(&repo);
    let pipeline = Pipeline::load(&repo.root(), engine, repo.runtime.handle().clone())
        .expect("loads on a plan-only engine");
    let plan = pipeline.plan_images().expect("plan");
    let references: Vec<&str> = plan.references.iter().map(String::as_str).collect();
    // golang:1.22 is computed (found by evaluation), alpine is reached through
    // a loaded file before `stdout()` stops `test`, private:1 is a literal.
    assert_eq!(references, vec!["alpine:3.20", "golang:1.22", "private:1"]);
    assert_eq!(plan.incomplete.len(), 1, "{:?}", plan.incomplete);
    assert_eq!(plan.incomplete[0].0, "test");
    assert!(
        plan.incomplete[0].1.contains("planning"),
        "{:?}",
        plan.incomplete
    );
    // Nothing was pulled, unpacked or run.
    let store_entries = std::fs::read_dir(repo.store().join("layers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(store_entries, 0);
}

#[test]
fn planning_needs_a_plan_only_engine() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def f() -> Container:\n    \"\"\"F.\"\"\"\n    return container(\"alpine\")\n",
    )]);
    let err = repo.pipeline().plan_images().unwrap_err();
    assert!(err.to_string().contains("plan-only"), "{err}");
}
