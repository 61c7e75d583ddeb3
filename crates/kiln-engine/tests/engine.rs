//! The engine end to end: real runc containers on overlayfs, a real store.

mod common;

use std::time::Duration;

use common::*;
use kiln_engine::{CacheVolume, Error, Event, ExecOptions, Expect};

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[tokio::test]
async fn exit_codes_env_workdir_user_and_streams() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let base = f.engine.container(IMAGE);

    let out = base
        .with_env_variable("GREETING", "hello")
        .with_workdir("/work/here")
        .with_exec(sh("echo $GREETING from $(pwd); echo oops >&2"))
        .sync()
        .await
        .unwrap();
    assert_eq!(out.stdout().await.unwrap(), "hello from /work/here\n");
    assert_eq!(out.stderr().await.unwrap(), "oops\n");
    assert_eq!(out.exit_code().await.unwrap(), 0);

    let uid = base
        .with_user("nobody")
        .with_exec(["id", "-u"])
        .stdout()
        .await
        .unwrap();
    assert_eq!(uid.trim(), "65534");
    let uid = base
        .with_user("1000:1000")
        .with_exec(["id", "-g"])
        .stdout()
        .await
        .unwrap();
    assert_eq!(uid.trim(), "1000");

    let err = base
        .with_exec(sh("echo partial output; echo bad thing >&2; exit 7"))
        .sync()
        .await
        .err()
        .expect("exit 7 must fail the step");
    let Error::StepFailed(failure) = &err else {
        panic!("expected a step failure, got {err}");
    };
    assert_eq!(failure.exit_code, Some(7));
    let message = err.to_string();
    assert!(message.contains("exited with code 7"), "{message}");
    assert!(
        message.contains("echo partial output"),
        "names the command: {message}"
    );
    assert!(
        message.contains("bad thing"),
        "shows the output tail: {message}"
    );

    let any = base.with_exec_opts(
        sh("exit 3"),
        ExecOptions {
            expect: Expect::Any,
            ..ExecOptions::default()
        },
    );
    assert_eq!(any.exit_code().await.unwrap(), 3);

    let missing = base
        .with_exec(["no-such-command"])
        .sync()
        .await
        .err()
        .expect("must fail");
    assert!(missing.to_string().contains("no-such-command"), "{missing}");
}

#[tokio::test]
async fn a_failed_step_is_not_cached() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let step = f
        .engine
        .container(IMAGE)
        .with_mounted_cache("/count", &CacheVolume::new("c"))
        .with_exec(sh(&format!("{}; exit 1", bump("fail"))));
    assert!(step.sync().await.is_err());
    assert!(f.reopen().container(IMAGE).sync().await.is_ok());
    let again = f
        .reopen()
        .container(IMAGE)
        .with_mounted_cache("/count", &CacheVolume::new("c"))
        .with_exec(sh(&format!("{}; exit 1", bump("fail"))));
    assert!(again.sync().await.is_err());
    assert_eq!(
        f.counter("c", "fail"),
        2,
        "a failure is retried, never replayed from cache"
    );
}

#[tokio::test]
async fn output_streams_while_the_step_runs() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let mut events = f.engine.subscribe();
    // The step cannot finish until the test has seen "first": if output were
    // only delivered at exit, this would never end.
    let step = f
        .engine
        .container(IMAGE)
        .with_mounted_cache("/sync", &CacheVolume::new("sync"))
        .with_exec(sh(
            "echo first; while [ ! -e /sync/go ]; do sleep 0.05; done; echo second",
        ));
    let run = tokio::spawn(async move { step.stdout().await });
    let marker = f.volume("sync").join("go");
    let saw_first = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.recv().await {
            if let Event::Output { data, .. } = &event {
                if String::from_utf8_lossy(data).contains("first") {
                    return true;
                }
            }
        }
        false
    })
    .await
    .expect("no output arrived while the step ran");
    assert!(saw_first);
    std::fs::write(&marker, "").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("step did not finish")
        .unwrap()
        .unwrap();
    assert_eq!(out, "first\nsecond\n");
}

#[tokio::test]
async fn second_run_executes_no_container() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let src = f.path("src");
    write(&src.join("main.c"), "int main() { return 0; }\n");
    let pipeline = |engine: &kiln_engine::Engine| {
        engine
            .container(IMAGE)
            .with_mounted_cache("/count", &CacheVolume::new("runs"))
            .with_directory("/src", &engine.host_directory(&src))
            .with_exec(sh(&format!("{}; wc -c < /src/main.c", bump("build"))))
    };
    assert_eq!(pipeline(&f.engine).stdout().await.unwrap().trim(), "25");
    assert_eq!(f.counter("runs", "build"), 1);

    // A new engine on the same store, as the next `kiln` process would be.
    let engine = f.reopen();
    let mut events = engine.subscribe();
    assert_eq!(pipeline(&engine).stdout().await.unwrap().trim(), "25");
    assert_eq!(f.counter("runs", "build"), 1, "the step ran again");
    let events = collect(&mut events);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Started { .. })),
        "nothing should run on a warm cache: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Cached { .. })));
}

#[tokio::test]
async fn one_changed_file_reruns_only_its_dependants() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let (a, b) = (f.path("a"), f.path("b"));
    write(&a.join("x.txt"), "a1");
    write(&b.join("y.txt"), "b1");
    write(&b.join(".gitignore"), "*.log\n");
    let run = |engine: kiln_engine::Engine| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let count = CacheVolume::new("runs");
            let base = engine
                .container(IMAGE)
                .with_mounted_cache("/count", &count)
                .with_exec(sh(&bump("base")));
            let left = base
                .with_directory("/in", &engine.host_directory(&a))
                .with_exec(sh(&format!("{}; cat /in/x.txt", bump("a"))));
            let right = base
                .with_directory("/in", &engine.host_directory(&b))
                .with_exec(sh(&format!("{}; cat /in/y.txt", bump("b"))));
            let (l, r) = tokio::join!(left.stdout(), right.stdout());
            (l.unwrap(), r.unwrap())
        }
    };
    assert_eq!(run(f.reopen()).await, ("a1".into(), "b1".into()));
    let counts = || {
        (
            f.counter("runs", "base"),
            f.counter("runs", "a"),
            f.counter("runs", "b"),
        )
    };
    assert_eq!(counts(), (1, 1, 1));

    write(&b.join("y.txt"), "b2");
    assert_eq!(run(f.reopen()).await, ("a1".into(), "b2".into()));
    assert_eq!(counts(), (1, 1, 2), "only the step that reads b re-runs");

    // Keys follow content: a new mtime, or a file .gitignore excludes, changes nothing.
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    filetime::set_file_mtime(a.join("x.txt"), later).unwrap();
    write(&b.join("debug.log"), "noise");
    assert_eq!(run(f.reopen()).await, ("a1".into(), "b2".into()));
    assert_eq!(counts(), (1, 1, 2));
}

#[tokio::test]
async fn independent_branches_run_in_parallel() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let sync = CacheVolume::new("rendezvous");
    // Each step waits for the other's marker: they finish only if run at once.
    let step = |me: &str, other: &str| {
        f.engine
            .container(IMAGE)
            .with_mounted_cache("/sync", &sync)
            .with_exec(sh(&format!(
                "touch /sync/{me}; i=0; while [ ! -e /sync/{other} ]; do i=$((i+1)); [ $i -gt 400 ] && exit 9; sleep 0.05; done; echo {me}"
            )))
    };
    let (left, right) = (step("left", "right"), step("right", "left"));
    let (l, r) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(left.stdout(), right.stdout())
    })
    .await
    .expect("branches did not run concurrently");
    assert_eq!(l.unwrap(), "left\n");
    assert_eq!(r.unwrap(), "right\n");
}

#[tokio::test]
async fn directories_and_files_in_and_out() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let built = f
        .engine
        .container(IMAGE)
        .with_new_file("/src/input.txt", "from the pipeline\n", 0o644)
        .with_exec(sh("mkdir -p /out/sub && cp /src/input.txt /out/copy.txt && echo nested > /out/sub/n.txt && rm /bin/wc"));
    let out = built.directory("/out");
    assert_eq!(out.entries().await.unwrap(), vec!["copy.txt", "sub"]);
    assert_eq!(
        built.file("/out/copy.txt").contents_string().await.unwrap(),
        "from the pipeline\n"
    );
    // A deletion in a step is a whiteout: the file is gone from later views.
    assert!(matches!(
        built.file("/bin/wc").contents().await,
        Err(Error::NotFound { .. })
    ));

    let dest = f.path("exported");
    write(&dest.join("stale.txt"), "old");
    out.export(&dest).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/n.txt")).unwrap(),
        "nested\n"
    );
    assert!(
        !dest.join("stale.txt").exists(),
        "export replaces the old tree"
    );
    let file_dest = f.path("single.txt");
    built
        .file("/out/copy.txt")
        .export(&file_dest)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&file_dest).unwrap(),
        "from the pipeline\n"
    );

    // Directory values compose, and a host tree and its copy hash the same.
    let host = f.path("tree");
    write(&host.join("a/b.txt"), "b");
    let host_dir = f.engine.host_directory(&host);
    let inside = f
        .engine
        .container(IMAGE)
        .with_directory("/t", &host_dir)
        .directory("/t");
    assert_eq!(
        host_dir.digest().await.unwrap(),
        inside.digest().await.unwrap()
    );
    let edited = inside.with_new_file("c.txt", "c", 0o600).without("a/b.txt");
    let seen = f
        .engine
        .container(IMAGE)
        .with_directory("/e", &edited)
        .with_exec(sh("ls -R /e | tr '\\n' ' '; stat -c %a /e/c.txt"))
        .stdout()
        .await
        .unwrap();
    assert!(seen.contains("c.txt") && !seen.contains("b.txt"), "{seen}");
    assert!(seen.trim_end().ends_with("600"), "{seen}");
}

#[tokio::test]
async fn missing_image_names_the_reference() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let err = f
        .engine
        .container("nosuch/image:1.0")
        .with_exec(["true"])
        .sync()
        .await
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("nosuch/image:1.0"), "{msg}");
    assert!(
        msg.contains("kiln image import"),
        "says how to fix it: {msg}"
    );
}

#[tokio::test]
async fn corrupt_output_blob_is_detected_and_the_step_reruns() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let make = |engine: &kiln_engine::Engine| {
        engine
            .container(IMAGE)
            .with_mounted_cache("/count", &CacheVolume::new("c"))
            .with_exec(sh(&format!("{}; echo the real output", bump("step"))))
    };
    assert_eq!(make(&f.engine).stdout().await.unwrap(), "the real output\n");
    let digest = kiln_store::Digest::of(b"the real output\n");
    let blob = f.engine.store().blob_path(&digest);
    std::fs::write(&blob, "the fake output\n").unwrap();
    assert_eq!(
        make(&f.reopen()).stdout().await.unwrap(),
        "the real output\n"
    );
    assert_eq!(
        f.counter("c", "step"),
        2,
        "a corrupt cached output is never served"
    );
}

#[tokio::test]
async fn corrupt_image_layer_is_refused() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let image = kiln_oci::load_image(f.engine.store(), IMAGE).unwrap();
    let layer = &image.layers[0];
    let blob = f.engine.store().blob_path(&layer.digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = f
        .reopen()
        .container(IMAGE)
        .with_exec(["true"])
        .sync()
        .await
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(layer.digest.hex()) || msg.contains("corrupt"),
        "{msg}"
    );
    assert!(
        !blob.exists(),
        "the corrupt blob is removed so a re-import can replace it"
    );
}

#[tokio::test]
async fn rust_api_default_engine() {
    if !privileged() {
        return;
    }
    let f = fixture();
    assert!(kiln_engine::Engine::set_global(f.engine.clone()));
    let out = kiln_engine::Container::from(IMAGE)
        .with_exec(["echo", "from the global engine"])
        .stdout()
        .await
        .unwrap();
    assert_eq!(out, "from the global engine\n");
}

#[tokio::test]
async fn locked_cache_volume_admits_one_step_at_a_time() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let volume = CacheVolume::new("exclusive");
    // Each step fails if it finds the other inside; with the lock they queue.
    let step = |who: &str| {
        f.engine
            .container(IMAGE)
            .with_mounted_cache_sharing("/v", &volume, kiln_engine::Sharing::Locked)
            .with_exec(sh(&format!(
                "if [ -e /v/busy ]; then echo overlap; exit 1; fi; echo {who} > /v/busy; sleep 0.5; rm /v/busy; echo {who}"
            )))
    };
    let (a, b) = (step("a"), step("b"));
    let (a, b) = tokio::join!(a.stdout(), b.stdout());
    assert_eq!(a.unwrap(), "a\n");
    assert_eq!(b.unwrap(), "b\n");
}

#[tokio::test]
async fn host_file_and_container_config() {
    if !privileged() {
        return;
    }
    let f = fixture();
    write(&f.path("cfg/app.conf"), "port=80\n");
    write(&f.path("cfg/deeper/app.conf"), "not me\n");
    write(&f.path("cfg/other.txt"), "other\n");
    let file = f.engine.host_file(f.path("cfg/app.conf"));
    assert_eq!(file.contents_string().await.unwrap(), "port=80\n");
    // Keyed by that file only: a sibling's change does not reach it.
    let seen = |engine: &kiln_engine::Engine| {
        engine
            .container(IMAGE)
            .with_mounted_cache("/count", &CacheVolume::new("c"))
            .with_file("/etc/app.conf", &engine.host_file(f.path("cfg/app.conf")))
            .with_exec(sh(&format!("{}; cat /etc/app.conf", bump("conf"))))
    };
    assert_eq!(seen(&f.engine).stdout().await.unwrap(), "port=80\n");
    write(&f.path("cfg/other.txt"), "changed\n");
    assert_eq!(seen(&f.reopen()).stdout().await.unwrap(), "port=80\n");
    assert_eq!(f.counter("c", "conf"), 1);

    std::env::set_var("KILN_TEST_CFG_SECRET", "cfg-secret-value");
    let secret = f.engine.secret_from_env("KILN_TEST_CFG_SECRET").unwrap();
    let config = f
        .engine
        .container(IMAGE)
        .with_env_variable("A", "1")
        .with_workdir("/srv")
        .with_user("nobody")
        .with_secret_variable("TOKEN", &secret)
        .config()
        .await
        .unwrap();
    assert!(config.env.contains(&"A=1".to_string()), "{config:?}");
    assert!(
        config.env.iter().any(|e| e.starts_with("PATH=")),
        "image env kept: {config:?}"
    );
    assert!(config.env.contains(&"TOKEN=***".to_string()), "{config:?}");
    assert_eq!(config.workdir, "/srv");
    assert_eq!(config.user.as_deref(), Some("nobody"));
    assert_eq!(config.cmd, vec!["sh"]);
}

#[tokio::test]
async fn subdirectory_of_a_host_tree_is_keyed_by_that_subtree() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let repo = f.path("repo");
    write(&repo.join("docs/a.md"), "a");
    write(&repo.join("other/b.txt"), "b");
    write(&repo.join(".gitignore"), "*.tmp\n");
    let run = |engine: kiln_engine::Engine| {
        let repo = repo.clone();
        async move {
            let docs = engine.host_directory(&repo).directory("docs");
            engine
                .container(IMAGE)
                .with_mounted_cache("/count", &CacheVolume::new("c"))
                .with_directory("/docs", &docs)
                .with_exec(sh(&format!("{}; ls /docs | tr '\\n' ' '", bump("docs"))))
                .stdout()
                .await
                .unwrap()
        }
    };
    assert_eq!(run(f.reopen()).await, "a.md ");
    write(&repo.join("other/b.txt"), "changed elsewhere");
    write(
        &repo.join("docs/scratch.tmp"),
        "ignored by the root .gitignore",
    );
    assert_eq!(run(f.reopen()).await, "a.md ");
    assert_eq!(
        f.counter("c", "docs"),
        1,
        "a change outside docs/ re-ran the step"
    );
    write(&repo.join("docs/c.md"), "c");
    assert_eq!(run(f.reopen()).await, "a.md c.md ");
    assert_eq!(f.counter("c", "docs"), 2);
}
