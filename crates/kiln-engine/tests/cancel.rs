//! `Engine::cancel`: a running step's container is killed within 2 s, however
//! the solve is driven (an async task, a blocking thread like Starlark's, or
//! nobody any more), and a cancelled engine starts nothing new.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_engine::{Engine, Error, Event, Outcome};
use kiln_testkit::sleeper_alive;

/// A step that says it started, then sleeps for a duration unique to this
/// test, so its process can be told apart from every other on the host.
fn sleeper(engine: &Engine, marker: u32) -> kiln_engine::Container {
    engine.container(IMAGE).with_exec([
        "sh".to_owned(),
        "-c".to_owned(),
        format!("echo started; exec sleep {marker}"),
    ])
}

/// Containers the runtime knows under the store's state root.
fn runc_containers(engine: &Engine) -> Vec<String> {
    kiln_testkit::runtime_containers(
        &kiln_engine::EngineOptions::default().runtime,
        &engine.store().runtime_state_dir(),
    )
}

/// Waits until the step has printed "started" and `sleep MARKER` runs.
async fn wait_started(events: &mut kiln_engine::Subscription, marker: u32) {
    let wait = async {
        while let Some(event) = events.recv().await {
            if let Event::Output { data, .. } = &event {
                if String::from_utf8_lossy(data).contains("started") {
                    return;
                }
            }
        }
        panic!("event stream ended before the step started");
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the step starts");
    // `exec sleep` follows the echo: give the shell its moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleeper_alive(&marker.to_string()) {
        assert!(Instant::now() < deadline, "the step never slept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until the sleeper and its container are gone; panics after `limit`.
async fn assert_gone_within(engine: &Engine, marker: u32, since: Instant, limit: Duration) {
    loop {
        let alive = sleeper_alive(&marker.to_string());
        let containers = runc_containers(engine);
        if !alive && containers.is_empty() {
            return;
        }
        assert!(
            since.elapsed() < limit,
            "after {:?}: sleeper alive: {alive}, containers: {containers:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn marker(offset: u32) -> u32 {
    6000 + offset * 1000 + std::process::id() % 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_step_awaited_by_a_task() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let marker = marker(0);
    let mut events = f.engine.subscribe();
    let step = sleeper(&f.engine, marker);
    let solving = tokio::spawn(async move { step.sync().await.map(drop) });
    wait_started(&mut events, marker).await;

    let cancelled_at = Instant::now();
    f.engine.cancel();
    let result = tokio::time::timeout(Duration::from_secs(2), solving)
        .await
        .expect("the solve ends within 2 s of the cancel")
        .expect("task");
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_gone_within(&f.engine, marker, cancelled_at, Duration::from_secs(2)).await;

    // The step is reported as failed, and its result is not cached.
    let finished: Vec<Event> = collect(&mut events)
        .into_iter()
        .filter(|e| matches!(e, Event::Finished { .. }))
        .collect();
    assert!(
        matches!(
            finished.as_slice(),
            [Event::Finished { outcome: Outcome::Failed { message, ending: Some(kiln_engine::Ending::Cancelled) }, .. }] if message == "cancelled"
        ),
        "{finished:?}"
    );
    let usage = f.engine.store().usage().expect("usage");
    assert_eq!(
        usage.action_cache.entries, 0,
        "a cancelled step is not cached"
    );

    // A cancelled engine starts nothing new, not even a cache lookup.
    let started = Instant::now();
    let again = f
        .engine
        .container(IMAGE)
        .with_exec(["echo", "never"])
        .sync()
        .await;
    assert!(matches!(again, Err(Error::Cancelled)), "{:?}", again.err());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_step_solved_from_a_blocking_thread() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let marker = marker(1);
    let mut events = f.engine.subscribe();
    let step = sleeper(&f.engine, marker);
    // How Starlark solves: a blocking thread parked in `block_on`, which no
    // drop can interrupt.
    let handle = tokio::runtime::Handle::current();
    let solving = tokio::task::spawn_blocking(move || handle.block_on(step.stdout()));
    wait_started(&mut events, marker).await;

    let cancelled_at = Instant::now();
    f.engine.cancel();
    let result = tokio::time::timeout(Duration::from_secs(2), solving)
        .await
        .expect("the blocking solve returns within 2 s of the cancel")
        .expect("task");
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_gone_within(&f.engine, marker, cancelled_at, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_step_whose_caller_was_dropped() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let marker = marker(2);
    let mut events = f.engine.subscribe();
    let step = sleeper(&f.engine, marker);
    let solving = tokio::spawn(async move { step.sync().await.map(drop) });
    wait_started(&mut events, marker).await;
    // The caller goes away; the engine still holds the shared solve, so
    // the container lives on, unpolled...
    solving.abort();
    let _ = solving.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sleeper_alive(&marker.to_string()),
        "the engine keeps a solve nobody awaits"
    );

    // ...until the engine is cancelled.
    let cancelled_at = Instant::now();
    let engine = f.engine.clone();
    tokio::task::spawn_blocking(move || engine.cancel())
        .await
        .expect("cancel");
    assert_gone_within(&f.engine, marker, cancelled_at, Duration::from_secs(2)).await;
}
