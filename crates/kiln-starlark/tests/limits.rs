//! Runaway pipelines: a loop or an allocation in kiln.star stops with an
//! error naming the limit, and cancellation stops evaluation at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_starlark::{Error, EvalLimits, Pipeline};

fn load_limited(repo: &Repo, limits: EvalLimits) -> Result<Pipeline, Error> {
    Pipeline::load_with_limits(
        &repo.root(),
        repo.engine.clone(),
        repo.runtime.handle().clone(),
        limits,
    )
}

const ENDLESS: &str = "for i in range(1000000):\n    for j in range(1000000):\n        pass\n";

#[test]
fn an_endless_top_level_loop_stops_at_the_step_budget() {
    let repo = Repo::new(&[("kiln.star", ENDLESS)]);
    let limits = EvalLimits {
        max_steps: 2_000_000,
        ..EvalLimits::default()
    };
    let started = Instant::now();
    let e = err(load_limited(&repo, limits));
    assert!(started.elapsed() < Duration::from_secs(30));
    let Error::LimitExceeded { limit, flag, .. } = &e else {
        panic!("expected the step limit, got {e:?}");
    };
    assert_eq!(limit, "2000000 interpreter steps");
    assert!(flag.contains("--eval-max-steps"));
    let text = e.to_string();
    assert!(text.contains("evaluating kiln.star"), "{text}");
    assert!(text.contains("KILN_EVAL_MAX_STEPS"), "{text}");
}

#[test]
fn an_endless_loop_in_a_called_function_stops_too() {
    let body = format!("def ci():\n    \"\"\"Loops.\"\"\"\n{}", indent(ENDLESS));
    let repo = Repo::new(&[("kiln.star", &body)]);
    let limits = EvalLimits {
        max_steps: 2_000_000,
        ..EvalLimits::default()
    };
    let pipeline = load_limited(&repo, limits).expect("loads");
    let e = err(pipeline.call("ci", vec![]));
    assert!(
        matches!(&e, Error::LimitExceeded { what, .. } if what == "ci()"),
        "{e:?}"
    );
}

#[test]
fn a_runaway_comprehension_stops_at_the_memory_ceiling() {
    // The probe that made `kiln functions` allocate until the host ran out.
    let repo = Repo::new(&[("kiln.star", "X = [i for i in range(1000000000)]\n")]);
    let limits = EvalLimits {
        max_heap_bytes: 64 << 20,
        ..EvalLimits::default()
    };
    let e = err(load_limited(&repo, limits));
    let Error::LimitExceeded { limit, flag, .. } = &e else {
        panic!("expected the memory limit, got {e:?}");
    };
    assert_eq!(limit, "64 MiB of Starlark memory");
    assert!(flag.contains("--eval-max-memory"));
}

#[test]
fn cancelling_the_engine_stops_evaluation_at_once() {
    let repo = Repo::new(&[("kiln.star", ENDLESS)]);
    let engine = repo.engine.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let at = Instant::now();
        engine.cancel();
        at
    });
    let e = err(load_limited(
        &repo,
        EvalLimits {
            max_steps: u64::MAX,
            ..EvalLimits::default()
        },
    ));
    let stopped = Instant::now();
    let cancelled_at = canceller.join().expect("canceller");
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    let lag = stopped.duration_since(cancelled_at);
    assert!(lag < Duration::from_secs(2), "stopped {lag:?} after cancel");
}

#[test]
fn a_normal_pipeline_is_far_inside_the_defaults() {
    let repo = Repo::new(&[(
        "kiln.star",
        "STEPS = [str(i) * 10 for i in range(20000)]\ndef ci():\n    \"\"\"Fine.\"\"\"\n    return len(STEPS)\n",
    )]);
    let pipeline = repo.load().expect("loads");
    pipeline.call("ci", vec![]).expect("runs");
}

fn indent(code: &str) -> String {
    code.lines().map(|l| format!("    {l}\n")).collect()
}
