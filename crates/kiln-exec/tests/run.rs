//! `Runtime::run` against real runc and overlayfs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use kiln_exec::{BindMount, Error, ExitStatus, Network, OutputStream, Runtime};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn exit_codes() {
    let Some(fx) = common::fixture("exit_codes") else {
        return;
    };
    let (r, _, _) = fx.run(fx.spec(&["true"])).await;
    let status = r.expect("true runs");
    assert_eq!(
        status,
        ExitStatus {
            code: Some(0),
            ..ExitStatus::default()
        }
    );
    assert!(status.success());

    let (r, _, _) = fx.run(fx.spec(&["sh", "-c", "exit 7"])).await;
    let status = r.expect("exit 7 is a status, not an error");
    assert_eq!(status.code, Some(7));
    assert!(!status.success());

    let (r, _, _) = fx.run(fx.spec(&["false"])).await;
    assert_eq!(r.expect("false runs").code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_by_signal_reports_the_signal() {
    let Some(fx) = common::fixture("killed_by_signal_reports_the_signal") else {
        return;
    };
    let spec = fx.spec(&["sh", "-c", "echo started; exec sleep 100"]);
    let id = spec.container_id.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = fx.runtime.run(spec, move |_, chunk| {
        let _ = tx.send(chunk.to_vec());
        None
    });
    let killer = async {
        rx.recv().await.expect("output before exit");
        let status = std::process::Command::new(&fx.runc)
            .arg("--root")
            .arg(fx.runtime.state_root())
            .args(["kill", &id, "KILL"])
            .status()
            .expect("runc kill");
        assert!(status.success());
    };
    let (result, ()) = tokio::time::timeout(TIMEOUT, async { tokio::join!(run, killer) })
        .await
        .expect("no deadlock");
    assert_eq!(
        result.expect("a killed process is a status"),
        ExitStatus {
            signal: Some(9),
            ..ExitStatus::default()
        }
    );
}

#[tokio::test]
async fn args_env_and_default_path() {
    let Some(fx) = common::fixture("args_env_and_default_path") else {
        return;
    };
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        r#"printf '<%s>' "$0" "$@"; echo; echo "FOO=$FOO"; echo "PATH=$PATH"; echo "HOME=$HOME""#,
        "zero",
        "a b",
        "",
        "c",
    ]);
    spec.env = vec!["FOO=bar baz".into()];
    let (r, out, err) = fx.run(spec).await;
    assert!(r.expect("runs").success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "<zero><a b><><c>");
    assert_eq!(lines[1], "FOO=bar baz");
    assert_eq!(lines[2], format!("PATH={}", kiln_exec::DEFAULT_PATH));
    assert_eq!(lines[3], "HOME=/root");

    let mut spec = fx.spec(&["sh", "-c", "echo $PATH; echo $HOME"]);
    spec.env = vec!["PATH=/bin".into(), "HOME=/tmp".into()];
    assert_eq!(
        fx.sh(spec.clone(), "echo $PATH; echo $HOME").await,
        "/bin\n/tmp\n"
    );
}

#[tokio::test]
async fn working_directory_existing_and_created() {
    let Some(fx) = common::fixture("working_directory_existing_and_created") else {
        return;
    };
    let mut spec = fx.spec(&[]);
    spec.cwd = "/tmp".into();
    assert_eq!(fx.sh(spec, "pwd").await, "/tmp\n");

    // Created, and the process writes into it: stays in the layer.
    let mut spec = fx.spec(&[]);
    spec.cwd = "/work/src".into();
    spec.user = Some("1000:1000".into());
    let upper = spec.upper_dir.clone();
    let out = fx.sh(spec, "pwd; echo x > out; stat -c '%u:%g' .").await;
    assert_eq!(out, "/work/src\n1000:1000\n");
    assert_eq!(common::tree(&upper), ["work/", "work/src/", "work/src/out"]);

    // Created but left empty: as much debris as a mount point.
    let mut spec = fx.spec(&[]);
    spec.cwd = "/empty/cwd".into();
    let upper = spec.upper_dir.clone();
    assert_eq!(fx.sh(spec, "pwd").await, "/empty/cwd\n");
    assert_eq!(common::tree(&upper), Vec::<String>::new());
}

#[tokio::test]
async fn users_numeric_named_and_unknown() {
    let Some(fx) = common::fixture("users_numeric_named_and_unknown") else {
        return;
    };
    let mut spec = fx.spec(&[]);
    spec.user = Some("1000:1000".into());
    assert_eq!(fx.sh(spec, "id -u; id -g").await, "1000\n1000\n");

    let mut spec = fx.spec(&[]);
    spec.user = Some("nobody".into());
    assert_eq!(fx.sh(spec, "id -u; id -g").await, "65534\n65534\n");

    let mut spec = fx.spec(&[]);
    spec.user = Some("builder:nogroup".into());
    assert_eq!(
        fx.sh(spec, "id -u; id -g; echo $HOME").await,
        "1000\n65534\n/home/builder\n"
    );

    assert_eq!(fx.sh(fx.spec(&[]), "id -u").await, "0\n");

    let mut spec = fx.spec(&["true"]);
    spec.user = Some("ghost".into());
    let bundle = spec.bundle_dir.clone();
    let (r, _, _) = fx.run(spec).await;
    match r {
        Err(e @ Error::User { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("\"ghost\""), "{msg}");
            assert!(msg.contains("/etc/passwd"), "{msg}");
        }
        other => panic!("expected a user error, got {other:?}"),
    }
    // A failed preparation is torn down too.
    assert_eq!(common::tree(&bundle), Vec::<String>::new());
    assert_eq!(common::mounts_under(fx.path()), Vec::<String>::new());
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let Some(fx) = common::fixture("stdout_and_stderr_are_separate") else {
        return;
    };
    let spec = fx.spec(&[
        "sh",
        "-c",
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
    ]);
    let (r, out, err) = fx.run(spec).await;
    assert!(r.expect("runs").success());
    assert_eq!(out, "out1\nout2\n");
    assert_eq!(err, "err1\nerr2\n");
}

/// The process blocks on a marker that the test only creates after it has
/// received "first" through `on_output`: passes only if output is streamed
/// while the process runs.
#[tokio::test]
async fn output_is_streamed_while_running() {
    let Some(fx) = common::fixture("output_is_streamed_while_running") else {
        return;
    };
    let sync = fx.path().join("sync");
    std::fs::create_dir(&sync).expect("sync dir");
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "echo first; while [ ! -e /sync/go ]; do sleep 0.05; done; echo second; echo done >&2",
    ]);
    spec.mounts.push(BindMount {
        source: sync.clone(),
        target: "/sync".into(),
        readonly: true,
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = fx.runtime.run(spec, move |stream, chunk| {
        let _ = tx.send((stream, chunk.to_vec()));
        None
    });
    let driver = async {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut released = false;
        // Ends when the run drops its callback, i.e. when it is done.
        while let Some((stream, chunk)) = rx.recv().await {
            match stream {
                OutputStream::Stdout => stdout.extend(chunk),
                OutputStream::Stderr => stderr.extend(chunk),
            }
            if !released && String::from_utf8_lossy(&stdout).contains("first\n") {
                assert!(!String::from_utf8_lossy(&stdout).contains("second"));
                std::fs::write(sync.join("go"), "").expect("marker");
                released = true;
            }
        }
        (stdout, stderr, released)
    };
    let (result, (stdout, stderr, released)) =
        tokio::time::timeout(TIMEOUT, async { tokio::join!(run, driver) })
            .await
            .expect("streaming must not deadlock");
    assert!(result.expect("runs").success());
    assert!(released);
    assert_eq!(String::from_utf8_lossy(&stdout), "first\nsecond\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "done\n");
}

/// The upper dir ends up with exactly the process's writes: a new file, a
/// whiteout for a deleted lower file, and no mount-point debris (no dev,
/// proc, sys, bind targets, missing parents, resolv.conf, copied-up parents).
#[tokio::test]
async fn upper_holds_only_the_process_writes() {
    let Some(fx) = common::fixture("upper_holds_only_the_process_writes") else {
        return;
    };
    let data = fx.path().join("layers/data");
    std::fs::create_dir_all(data.join("data")).expect("layer");
    std::fs::write(data.join("data/victim"), "v").expect("layer file");
    std::fs::write(data.join("data/keep"), "k").expect("layer file");
    let secret = fx.path().join("secret");
    std::fs::write(&secret, "s3cret").expect("secret");
    let cache = fx.path().join("cache");
    std::fs::create_dir(&cache).expect("cache");

    let mut spec = fx.spec(&[]);
    spec.lower_layers = vec![data, fx.base.clone()];
    spec.network = Network::Host;
    spec.mounts = vec![
        BindMount {
            source: secret.clone(),
            target: "/run/secrets/x".into(),
            readonly: true,
        },
        // Parent exists in the lower layers: creating the target copies it up.
        BindMount {
            source: secret.clone(),
            target: "/etc/kiln/token".into(),
            readonly: true,
        },
        BindMount {
            source: cache.clone(),
            target: "/var/cache/deep/dir".into(),
            readonly: false,
        },
        BindMount {
            source: cache.clone(),
            target: "/tmp/cache".into(),
            readonly: false,
        },
    ];
    let upper = spec.upper_dir.clone();
    let out = fx
        .sh(
            spec,
            "cat /run/secrets/x; echo; echo hi > /created; rm /data/victim; echo c > /var/cache/deep/dir/c; ls /dev/null",
        )
        .await;
    assert_eq!(out, "s3cret\n/dev/null\n");
    assert_eq!(
        common::tree(&upper),
        ["created", "data/", "data/victim c0:0"],
        "upper must hold only the process's writes"
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("c")).expect("cache write"),
        "c\n"
    );
}

/// A directory the process creates under a mount target's created parent
/// stays, even though the parent started as a stub.
#[tokio::test]
async fn process_content_next_to_mount_points_stays() {
    let Some(fx) = common::fixture("process_content_next_to_mount_points_stays") else {
        return;
    };
    let secret = fx.path().join("secret");
    std::fs::write(&secret, "s").expect("secret");
    let mut spec = fx.spec(&[]);
    spec.mounts = vec![BindMount {
        source: secret,
        target: "/run/secrets/x".into(),
        readonly: true,
    }];
    let upper = spec.upper_dir.clone();
    fx.sh(
        spec,
        "mkdir -p /run/secrets/mine/sub && echo 1 > /run/secrets/mine/sub/f && mkdir /dev-not",
    )
    .await;
    assert_eq!(
        common::tree(&upper),
        [
            "dev-not/",
            "run/",
            "run/secrets/",
            "run/secrets/mine/",
            "run/secrets/mine/sub/",
            "run/secrets/mine/sub/f"
        ]
    );
}

#[tokio::test]
async fn network_none_has_only_loopback() {
    let Some(fx) = common::fixture("network_none_has_only_loopback") else {
        return;
    };
    let out = fx.sh(fx.spec(&[]), "cat /proc/net/dev").await;
    assert_eq!(interfaces(&out), ["lo"]);
    // And loopback is up.
    let out = fx.sh(fx.spec(&[]), "ip link show lo").await;
    assert!(out.contains("UP"), "{out}");
}

#[tokio::test]
async fn network_host_sees_host_interfaces() {
    let Some(fx) = common::fixture("network_host_sees_host_interfaces") else {
        return;
    };
    let mut spec = fx.spec(&[]);
    spec.network = Network::Host;
    let out = fx
        .sh(spec, "cat /proc/net/dev; echo ---; cat /etc/resolv.conf")
        .await;
    let (dev, resolv) = out.split_once("---\n").expect("separator");
    let host = std::fs::read_to_string("/proc/net/dev").expect("host /proc/net/dev");
    assert_eq!(interfaces(dev), interfaces(&host));
    if let Ok(host_resolv) = std::fs::read_to_string("/etc/resolv.conf") {
        assert_eq!(resolv, host_resolv);
    }
}

fn interfaces(proc_net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn hostname_is_set() {
    let Some(fx) = common::fixture("hostname_is_set") else {
        return;
    };
    let mut spec = fx.spec(&[]);
    spec.hostname = Some("kiln-step".into());
    assert_eq!(fx.sh(spec, "hostname").await, "kiln-step\n");
}

#[tokio::test]
async fn bind_mounts_readonly_and_writable() {
    let Some(fx) = common::fixture("bind_mounts_readonly_and_writable") else {
        return;
    };
    let ro = fx.path().join("ro");
    let rw = fx.path().join("rw");
    std::fs::create_dir(&ro).expect("ro");
    std::fs::create_dir(&rw).expect("rw");
    std::fs::write(ro.join("existing"), "e").expect("file");
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "cat /ro/existing; echo x > /ro/new && exit 10; echo y > /rw/new || exit 11; mkdir -p /rw/d/e",
    ]);
    spec.mounts = vec![
        BindMount {
            source: ro.clone(),
            target: "/ro".into(),
            readonly: true,
        },
        BindMount {
            source: rw.clone(),
            target: "/rw".into(),
            readonly: false,
        },
    ];
    let upper = spec.upper_dir.clone();
    let (r, out, err) = fx.run(spec).await;
    assert!(r.expect("runs").success(), "{out} {err}");
    assert_eq!(out, "e");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!ro.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(rw.join("new")).expect("persisted"),
        "y\n"
    );
    assert!(rw.join("d/e").is_dir());
    assert_eq!(common::tree(&upper), Vec::<String>::new());
}

#[tokio::test]
async fn stack_of_130_layers() {
    let Some(fx) = common::fixture("stack_of_130_layers") else {
        return;
    };
    // Long paths: 130 of them would not fit in one page of mount options.
    let deep = fx
        .path()
        .join("layers")
        .join("d".repeat(100))
        .join("e".repeat(100));
    let mut lowers = Vec::new();
    for i in 0..130 {
        let layer = deep.join(format!("layer-{i:03}"));
        std::fs::create_dir_all(layer.join("layers")).expect("layer");
        std::fs::write(layer.join(format!("layers/f{i:03}")), "").expect("file");
        lowers.push(layer);
    }
    lowers.reverse(); // topmost first
    lowers.push(fx.base.clone());
    let mut spec = fx.spec(&[]);
    spec.lower_layers = lowers;
    let out = fx
        .sh(
            spec,
            "ls /layers | wc -l; ls /layers | head -1; ls /layers | tail -1",
        )
        .await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["130", "f000", "f129"]
    );
}

/// No lower layers at all: the process comes from a bind mount.
#[tokio::test]
async fn scratch_rootfs() {
    let Some(fx) = common::fixture("scratch_rootfs") else {
        return;
    };
    let mut spec = fx.spec(&[
        "/busybox",
        "sh",
        "-c",
        "echo scratch > /made; /busybox ls /",
    ]);
    spec.lower_layers = vec![];
    spec.mounts = vec![BindMount {
        source: fx.base.join("bin/busybox"),
        target: "/busybox".into(),
        readonly: true,
    }];
    let upper = spec.upper_dir.clone();
    let (r, out, err) = fx.run(spec).await;
    assert!(r.expect("runs").success(), "{err}");
    assert!(out.contains("busybox") && out.contains("made"), "{out}");
    assert_eq!(common::tree(&upper), ["made"]);
}

#[tokio::test]
async fn command_not_found_exits_127_with_the_runtime_message_and_leaves_nothing() {
    let Some(fx) = common::fixture("command_not_found_exits_127") else {
        return;
    };
    let spec = fx.spec(&["no-such-command"]);
    let (bundle, upper) = (spec.bundle_dir.clone(), spec.upper_dir.clone());
    let (r, _, err) = fx.run(spec).await;
    assert_eq!(r.expect("the step's failure").code, Some(127));
    // runc's words, or crun's.
    assert!(
        err.contains(r#"exec: "no-such-command": executable file not found in $PATH"#)
            || err.contains("executable file `no-such-command` not found in $PATH"),
        "{err}"
    );
    assert_eq!(common::tree(&bundle), Vec::<String>::new());
    assert_eq!(common::tree(&upper), Vec::<String>::new());
    assert_eq!(fx.runc_list(), Vec::<String>::new());
}

#[tokio::test]
async fn missing_runtime_binary() {
    let Some(fx) = common::fixture("missing_runtime_binary") else {
        return;
    };
    let missing = PathBuf::from("/nonexistent/kiln/runc");
    let runtime = Runtime::new(missing.clone(), fx.path().join("state"));
    let msg = runtime.check().expect_err("missing binary").to_string();
    assert!(msg.contains("/nonexistent/kiln/runc"), "{msg}");
    assert!(msg.contains("apt-get install runc"), "{msg}");
    let version = fx.runtime.check().expect("a real runtime");
    assert!(
        version.contains("runc") || version.contains("crun"),
        "{version}"
    );

    let spec = fx.spec(&["true"]);
    let bundle = spec.bundle_dir.clone();
    let err = runtime
        .run(spec, |_, _| None)
        .await
        .expect_err("cannot run");
    assert!(matches!(err, Error::RuntimeUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/kiln/runc"));
    assert_eq!(common::mounts_under(fx.path()), Vec::<String>::new());
    assert_eq!(common::tree(&bundle), Vec::<String>::new());
}

#[tokio::test]
async fn invalid_specs_are_rejected_up_front() {
    let Some(fx) = common::fixture("invalid_specs_are_rejected_up_front") else {
        return;
    };
    type Mutation = Box<dyn Fn(&mut kiln_exec::RunSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("container id", Box::new(|s| s.container_id = "a/b".into())),
        ("args", Box::new(|s| s.args.clear())),
        ("cwd", Box::new(|s| s.cwd = "relative".into())),
        ("env", Box::new(|s| s.env = vec!["NOEQUALS".into()])),
        (
            "lower layer",
            Box::new(|s| s.lower_layers = vec!["/nonexistent/layer".into()]),
        ),
        (
            "mount target",
            Box::new(|s| {
                s.mounts = vec![BindMount {
                    source: "/tmp".into(),
                    target: "rel".into(),
                    readonly: true,
                }]
            }),
        ),
        (
            "mount source",
            Box::new(|s| {
                s.mounts = vec![BindMount {
                    source: "/nonexistent/src".into(),
                    target: "/x".into(),
                    readonly: true,
                }]
            }),
        ),
    ];
    for (what, mutate) in cases {
        let mut spec = fx.spec(&["true"]);
        mutate(&mut spec);
        let err = fx.runtime.run(spec, |_, _| None).await.expect_err(what);
        assert!(matches!(err, Error::InvalidSpec { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

#[tokio::test]
async fn bundle_is_empty_after_a_run_and_reusable() {
    let Some(fx) = common::fixture("bundle_is_empty_after_a_run_and_reusable") else {
        return;
    };
    let spec = fx.spec(&["true"]);
    let bundle = spec.bundle_dir.clone();
    assert!(fx.run(spec.clone()).await.0.expect("first").success());
    assert_eq!(common::tree(&bundle), Vec::<String>::new());
    assert!(fx.run(spec).await.0.expect("same bundle again").success());
}

/// Median wall time of a trivial step (`true`), printed for the record.
#[tokio::test]
async fn trivial_step_timing() {
    let Some(fx) = common::fixture("trivial_step_timing") else {
        return;
    };
    let mut times = Vec::new();
    for _ in 0..20 {
        let spec = fx.spec(&["true"]);
        let start = std::time::Instant::now();
        assert!(fx.run(spec).await.0.expect("true").success());
        times.push(start.elapsed());
    }
    times.sort();
    eprintln!(
        "trivial step (`true`): median {:?}, min {:?}, max {:?} over {} runs",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let Some(fx) = common::fixture("a_fork_bomb_stops_at_the_pids_limit") else {
        return;
    };
    // 200 sleepers: under a limit of 50 the shell's forks start failing;
    // under the default limit all start. When the shell (pid 1 of the
    // step) exits, the kernel kills the rest.
    let bomb = "i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; echo all started";
    let mut spec = fx.spec(&["sh", "-c", bomb]);
    spec.limits = kiln_exec::StepLimits {
        pids: Some(50),
        ..kiln_exec::StepLimits::default()
    };
    let (r, out, err) = fx.run(spec).await;
    r.expect("the step runs");
    assert!(err.contains("can't fork"), "stdout {out:?}, stderr {err:?}");
    assert!(!out.contains("all started"), "{out}");

    let (r, out, err) = fx.run(fx.spec(&["sh", "-c", bomb])).await;
    assert!(r.expect("the step runs").success(), "{err}");
    assert_eq!(out, "all started\n", "{err}");
}

#[tokio::test]
async fn a_step_cannot_open_a_user_namespace_or_enter_another() {
    let Some(fx) = common::fixture("a_step_cannot_open_a_user_namespace") else {
        return;
    };
    for probe in ["unshare -U true", "unshare -r true", "nsenter -t 1 -m true"] {
        let (r, out, err) = fx.run(fx.spec(&["sh", "-c", probe])).await;
        let status = r.expect("the step runs");
        assert!(
            !status.success(),
            "{probe} succeeded inside a step: {out} {err}"
        );
    }
    // Ordinary process creation still works (clone without namespaces,
    // and clone3 falling back to clone).
    let (r, out, _) = fx
        .run(fx.spec(&["sh", "-c", "echo $(echo nested) && (exit 0)"]))
        .await;
    assert!(r.expect("runs").success());
    assert_eq!(out, "nested\n");
}

#[tokio::test]
async fn open_file_limits_are_dockers_and_a_step_may_raise_its_own() {
    let Some(fx) = common::fixture("open_file_limits_are_dockers") else {
        return;
    };
    // Docker's 524288, unless kiln's own hard limit is lower (it cannot be
    // raised without CAP_SYS_RESOURCE).
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    let hard = own.min(524_288);
    let (r, out, err) = fx
        .run(fx.spec(&[
            "sh",
            "-c",
            "ulimit -Sn; ulimit -Hn; ulimit -Sn $(ulimit -Hn) && ulimit -Sn",
        ]))
        .await;
    assert!(r.expect("runs").success(), "{err}");
    assert_eq!(out, format!("1024\n{hard}\n{hard}\n"), "{err}");
}

#[tokio::test]
async fn a_command_that_cannot_run_exits_127_or_126_as_under_a_shell() {
    let Some(fx) = common::fixture("a_command_that_cannot_run") else {
        return;
    };
    let (r, _, err) = fx.run(fx.spec(&["no-such-command"])).await;
    let status = r.expect("a missing command is the step's failure, not an error");
    assert_eq!(status.code, Some(127), "{err}");
    assert!(
        err.contains("no-such-command") && err.contains("not found"),
        "{err}"
    );

    let (r, _, err) = fx.run(fx.spec(&["/etc"])).await;
    assert_eq!(r.expect("a step failure").code, Some(126), "{err}");
    let err = err.to_lowercase();
    assert!(
        err.contains("permission denied") || err.contains("not permitted"),
        "{err}"
    );
}
