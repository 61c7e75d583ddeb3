//! Services: a step reaches a service by its alias; the service starts once
//! per run however many steps bind it, not at all when they are cached; two
//! runs with a service on the same port do not collide; a service that is
//! never ready, or that dies while a step uses it, is named in the error
//! with the tail of its output. Real runc, real network namespaces and
//! slirp4netns: needs root (see `common`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_engine::{Container, Engine, Error, Event, Readiness, Service, ServiceOptions};

/// A busybox web server on port 8080 whose index page says `body`.
fn web(engine: &Engine, body: &str) -> Service {
    engine.container(IMAGE).with_exposed_port(8080).as_service(
        [
            "sh".to_owned(),
            "-c".to_owned(),
            format!(
                "mkdir -p /www && echo {body} > /www/index.html && echo serving {body} && \
                     exec httpd -f -v -p 8080 -h /www"
            ),
        ],
        &[],
    )
}

fn client(engine: &Engine, alias: &str, service: &Service, script: &str) -> Container {
    engine
        .container(IMAGE)
        .with_service_binding(alias, service)
        .with_exec(["sh", "-c", script])
}

/// How many times a service started, by its progress step.
fn service_starts(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Started { name, .. } if name.starts_with("service ")))
        .count()
}

fn runc_containers(engine: &Engine) -> Vec<String> {
    kiln_testkit::runtime_containers(
        &kiln_engine::EngineOptions::default().runtime,
        &engine.store().runtime_state_dir(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_steps_reach_a_shared_service_by_alias_and_cached_ones_start_nothing() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let mut events = f.engine.subscribe();
    let db = web(&f.engine, "version-one");
    let endpoint = db.endpoint(None).await.expect("endpoint");
    assert!(
        endpoint.starts_with("svc-") && endpoint.ends_with(":8080"),
        "{endpoint}"
    );
    let first = client(&f.engine, "db", &db, "wget -q -O- http://db:8080/");
    let second = client(
        &f.engine,
        "web",
        &db,
        &format!("wget -q -O- http://{endpoint}/ && wget -q -O- http://web:8080/"),
    );
    let (a, b) = tokio::join!(first.stdout(), second.stdout());
    assert_eq!(a.expect("first step"), "version-one\n");
    assert_eq!(b.expect("second step"), "version-one\nversion-one\n");
    f.engine.shutdown().await;
    let seen = collect(&mut events);
    assert_eq!(service_starts(&seen), 1, "one service for both steps");
    // The service's output is a step of its own, and it ended when the
    // engine shut down.
    assert!(seen.iter().any(|e| matches!(e,
        Event::Output { data, .. } if String::from_utf8_lossy(data).contains("serving version-one"))));
    assert!(
        runc_containers(&f.engine).is_empty(),
        "{:?}",
        runc_containers(&f.engine)
    );

    // Cached steps bound to the service start nothing.
    let engine = f.reopen();
    let mut events = engine.subscribe();
    let db = web(&engine, "version-one");
    let out = client(&engine, "db", &db, "wget -q -O- http://db:8080/")
        .stdout()
        .await
        .expect("cached");
    assert_eq!(out, "version-one\n");
    engine.shutdown().await;
    assert_eq!(service_starts(&collect(&mut events)), 0);

    // Another service (a new "image") re-runs the step bound to it.
    let engine = f.reopen();
    let db = web(&engine, "version-two");
    let out = client(&engine, "db", &db, "wget -q -O- http://db:8080/")
        .stdout()
        .await
        .expect("re-run");
    assert_eq!(out, "version-two\n");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_with_a_service_on_the_same_port_do_not_collide() {
    if !privileged() {
        return;
    }
    let (f, g) = (fixture(), fixture());
    let run = |engine: Engine, body: &'static str| async move {
        let db = web(&engine, body);
        // Both services listen while both steps run.
        let out = client(&engine, "db", &db, "sleep 1; wget -q -O- http://db:8080/")
            .stdout()
            .await;
        engine.shutdown().await;
        out
    };
    let (a, b) = tokio::join!(
        run(f.engine.clone(), "run-a"),
        run(g.engine.clone(), "run-b")
    );
    assert_eq!(a.expect("run a"), "run-a\n");
    assert_eq!(b.expect("run b"), "run-b\n");

    // Within one run, two services cannot share a port.
    let one = web(&f.engine, "first");
    let other = web(&f.engine, "second");
    let step = f
        .engine
        .container(IMAGE)
        .with_service_binding("one", &one)
        .with_service_binding("other", &other)
        .with_exec(["true"]);
    let err = step.sync().await.err().expect("a port conflict");
    assert!(err.to_string().contains("wants port 8080"), "{err}");
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_becomes_ready_fails_in_time_naming_port_and_log() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let never = f.engine.container(IMAGE).as_service_opts(ServiceOptions {
        args: vec![
            "sh".into(),
            "-c".into(),
            "echo warming up; exec sleep 600".into(),
        ],
        ports: vec![5432],
        readiness: Readiness {
            timeout: Some(Duration::from_secs(2)),
            ..Readiness::default()
        },
    });
    let started = Instant::now();
    let err = client(&f.engine, "db", &never, "true")
        .sync()
        .await
        .err()
        .expect("never ready");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(matches!(err, Error::Service { .. }), "{msg}");
    assert!(msg.contains("sleep 600"), "names the service: {msg}");
    assert!(
        msg.contains("was not ready after 2 s: port 5432 accepts no connections"),
        "{msg}"
    );
    assert!(msg.contains("warming up"), "shows its output: {msg}");
    f.engine.shutdown().await;
    assert!(
        runc_containers(&f.engine).is_empty(),
        "{:?}",
        runc_containers(&f.engine)
    );

    // A service without a command is refused before anything runs.
    let err = client(
        &f.engine,
        "db",
        &f.engine.scratch().as_service(Vec::<String>::new(), &[]),
        "true",
    )
    .sync()
    .await
    .err()
    .expect("no command");
    assert!(err.to_string().contains("has no command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_dies_mid_step_is_named_in_the_failure() {
    if !privileged() {
        return;
    }
    let f = fixture();
    // httpd daemonizes (the port is open at once), then the service's main
    // process exits 3 a second later, taking the container down.
    let flaky = f.engine.container(IMAGE).as_service(
        [
            "sh",
            "-c",
            "mkdir -p /www && echo up > /www/index.html && httpd -p 8080 -h /www && \
             echo about to crash && sleep 1 && exit 3",
        ],
        &[8080],
    );
    let err = client(
        &f.engine,
        "db",
        &flaky,
        "sleep 3; wget -q -O- http://db:8080/",
    )
    .sync()
    .await
    .err()
    .expect("the step fails");
    let msg = err.to_string();
    assert!(
        msg.contains("exited with code 3 while the step ran"),
        "{msg}"
    );
    assert!(msg.contains("about to crash"), "{msg}");
    // A later step bound to it is told before it starts.
    let err = client(&f.engine, "db", &flaky, "echo never")
        .sync()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("exited with code 3 before this step started"),
        "{err}"
    );
    f.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_can_wait_for_a_log_line_or_a_command() {
    if !privileged() {
        return;
    }
    let f = fixture();
    // Ready only after the line: the port opens a second before it.
    let by_line = f.engine.container(IMAGE).as_service_opts(ServiceOptions {
        args: vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p /www && echo line > /www/index.html && httpd -p 8080 -h /www && \
             sleep 1 && echo 'database system is ready' && touch /www/ready && exec sleep 600"
                .into(),
        ],
        ports: vec![8080],
        readiness: Readiness {
            log_line: Some("system is ready".into()),
            ..Readiness::default()
        },
    });
    let out = client(
        &f.engine,
        "db",
        &by_line,
        "wget -q -O- http://db:8080/ready && echo ok",
    )
    .stdout()
    .await
    .expect("ready after its line");
    assert_eq!(out, "ok\n");
    f.engine.shutdown().await;

    // Ready when a command in the service's image succeeds on its network.
    let by_command = f.engine.container(IMAGE).as_service_opts(ServiceOptions {
        args: vec![
            "sh".into(),
            "-c".into(),
            "sleep 1; mkdir -p /www && echo cmd > /www/index.html && exec httpd -f -p 9090 -h /www"
                .into(),
        ],
        ports: vec![],
        readiness: Readiness {
            command: Some(vec![
                "wget".into(),
                "-q".into(),
                "-O-".into(),
                "http://127.0.0.1:9090/".into(),
            ]),
            ..Readiness::default()
        },
    });
    let out = client(&f.engine, "db", &by_command, "wget -q -O- http://db:9090/")
        .stdout()
        .await
        .expect("ready after its command");
    assert_eq!(out, "cmd\n");
    f.engine.shutdown().await;
}
