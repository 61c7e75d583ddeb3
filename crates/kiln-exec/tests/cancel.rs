//! Cancellation (dropping the run future) and `cleanup_stale` after a run
//! whose whole process was SIGKILLed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_exec::{BindMount, Runtime};
use kiln_testkit::{process_alive, sleeper_alive};

/// Whether a runtime process (`runc ... run ... ID`) for `id` is alive.
fn runtime_alive(id: &str) -> bool {
    process_alive(|args| args.contains(&b"run".as_slice()) && args.contains(&id.as_bytes()))
}

#[tokio::test]
async fn dropping_the_future_kills_and_cleans_up() {
    let Some(fx) = common::fixture("dropping_the_future_kills_and_cleans_up") else {
        return;
    };
    let cache = fx.path().join("cache");
    std::fs::create_dir(&cache).expect("cache");
    // A distinctive duration identifies our sleeper among host processes.
    let marker = format!("{}", 1000 + std::process::id() % 1000);
    let script = format!("echo started; echo partial > /partial; exec sleep {marker}");
    let mut spec = fx.spec(&["sh", "-c", &script]);
    spec.mounts = vec![BindMount {
        source: cache,
        target: "/mnt/cache".into(),
        readonly: false,
    }];
    let (bundle, upper, id) = (
        spec.bundle_dir.clone(),
        spec.upper_dir.clone(),
        spec.container_id.clone(),
    );
    let output = Arc::new(Mutex::new(Vec::new()));
    let sink = output.clone();
    let result = tokio::time::timeout(
        Duration::from_secs(3),
        fx.runtime.run(spec, move |_, chunk| {
            sink.lock().expect("lock").extend_from_slice(chunk);
            None
        }),
    )
    .await;
    assert!(
        result.is_err(),
        "the step must still be running at the timeout"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.lock().expect("lock")),
        "started\n",
        "the step had started before being dropped"
    );

    // All of this holds as soon as the drop has returned.
    assert_eq!(common::mounts_under(fx.path()), Vec::<String>::new());
    assert!(!fx.runc_list().contains(&id), "{:?}", fx.runc_list());
    assert!(
        !sleeper_alive(&marker),
        "the container process must be dead"
    );
    assert_eq!(common::tree(&bundle), Vec::<String>::new());
    // The partial write stays (the engine decides what to do with a
    // cancelled step's layer), the mount debris does not.
    assert_eq!(common::tree(&upper), ["partial"]);
}

/// Runs in a child process: starts a long step and reports when it runs,
/// then waits to be SIGKILLed by `cleanup_stale_cleans_runs_of_killed_processes`.
#[test]
#[ignore = "helper process for cleanup_stale_cleans_runs_of_killed_processes"]
fn stale_run_helper() {
    let Some(config) = std::env::var_os("KILN_EXEC_STALE_HELPER") else {
        return;
    };
    let config = std::fs::read_to_string(config).expect("helper config");
    let spec: kiln_exec::RunSpec = serde_json::from_str(&config).expect("helper spec");
    let runc = std::env::var_os("KILN_EXEC_STALE_RUNC").expect("runc");
    let state = std::env::var_os("KILN_EXEC_STALE_STATE").expect("state");
    let runtime = Runtime::new(runc.into(), state.into());
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let result = runtime
            .run(spec, |_, chunk| {
                if String::from_utf8_lossy(chunk).contains("started") {
                    println!("HELPER-RUNNING");
                }
                None
            })
            .await;
        println!("HELPER-FINISHED {result:?}");
    });
}

#[tokio::test]
async fn cleanup_stale_cleans_runs_of_killed_processes() {
    let Some(fx) = common::fixture("cleanup_stale_cleans_runs_of_killed_processes") else {
        return;
    };
    let marker = format!("{}", 2000 + std::process::id() % 1000);
    let script = format!("echo started; exec sleep {marker}");
    let mut stale = fx.spec(&["sh", "-c", &script]);
    // All bundles live under one runs root, as in the engine.
    let runs_root = fx.path().join("runs-root");
    std::fs::create_dir(&runs_root).expect("runs root");
    let stale_bundle = move_bundle(&mut stale, &runs_root, "stale");
    let stale_upper = stale.upper_dir.clone();
    let config = fx.path().join("helper.json");
    std::fs::write(&config, serde_json::to_string(&stale).expect("json")).expect("config");

    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "stale_run_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KILN_EXEC_STALE_HELPER", &config)
        .env("KILN_EXEC_STALE_RUNC", &fx.runc)
        .env("KILN_EXEC_STALE_STATE", fx.runtime.state_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("helper");
    let stdout = helper.stdout.take().expect("helper stdout");
    let running = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("HELPER-RUNNING"))
    });
    let running = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("helper reports in time")
        .expect("reader");
    assert!(running, "the helper's step started");
    assert!(runtime_alive(&stale.container_id));
    // "started" is printed before the shell execs sleep: on a loaded
    // machine the exec can come after the checks below.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sleeper_alive(&marker) {
        assert!(std::time::Instant::now() < deadline, "the step never slept");
        std::thread::sleep(Duration::from_millis(10));
    }
    // kiln dies without any chance to clean up.
    helper.kill().expect("SIGKILL helper");
    helper.wait().expect("reap helper");
    // PR_SET_PDEATHSIG takes the runtime process down with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runtime_alive(&stale.container_id) {
        assert!(std::time::Instant::now() < deadline, "runc outlived kiln");
        std::thread::sleep(Duration::from_millis(20));
    }

    // What a killed kiln leaves: a mounted rootfs, a container whose
    // process outlived runc, an unlocked lock file.
    let rootfs = stale_bundle.join("rootfs");
    assert!(common::mounts_under(fx.path()).contains(&rootfs.display().to_string()));
    assert!(fx.runc_list().contains(&stale.container_id));
    assert!(sleeper_alive(&marker));

    // A live run in the same runs root must not be touched...
    let mut live = fx.spec(&["sh", "-c", "echo live; sleep 2; echo still"]);
    let live_bundle = move_bundle(&mut live, &runs_root, "live");
    // ...nor a bundle that never got a lock.
    std::fs::create_dir(runs_root.join("unstarted")).expect("unstarted");

    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let live_run = fx.runtime.run(live, move |_, _| {
        if let Some(tx) = tx.take() {
            let _ = tx.send(());
        }
        None
    });
    let cleaner = async {
        rx.await.expect("live run started");
        fx.runtime.cleanup_stale(&runs_root)
    };
    let (live_result, cleaned) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(live_run, cleaner)
    })
    .await
    .expect("no deadlock");
    assert_eq!(cleaned.expect("cleanup_stale"), 1);
    assert!(live_result.expect("live run unaffected").success());

    assert_eq!(common::mounts_under(fx.path()), Vec::<String>::new());
    assert_eq!(fx.runc_list(), Vec::<String>::new());
    assert!(!sleeper_alive(&marker));
    assert!(!stale_bundle.exists());
    assert!(live_bundle.exists() && runs_root.join("unstarted").exists());
    // Layers are untouched: the stale run's upper dir is still there.
    assert!(stale_upper.exists());
    assert!(fx.base.join("bin/busybox").exists());

    // Idempotent.
    assert_eq!(fx.runtime.cleanup_stale(&runs_root).expect("again"), 0);
    assert_eq!(
        fx.runtime
            .cleanup_stale(&fx.path().join("nonexistent"))
            .expect("missing root"),
        0
    );
}

fn move_bundle(spec: &mut kiln_exec::RunSpec, runs_root: &Path, name: &str) -> PathBuf {
    let bundle = runs_root.join(name);
    std::fs::create_dir(&bundle).expect("bundle");
    spec.bundle_dir = bundle.clone();
    bundle
}
