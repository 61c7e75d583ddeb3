//! Resource limits, timeouts, ulimits and the hostname of a step, under
//! real runc and real cgroups. Needs root and runc (see `common`).

mod common;

use std::time::{Duration, Instant};

use kiln_exec::{Rlimit, StepLimits};

#[tokio::test]
async fn a_step_over_its_memory_limit_is_reported_oom_killed() {
    let Some(fx) = common::fixture("a_step_over_its_memory_limit_is_reported_oom_killed") else {
        return;
    };
    let limits = StepLimits {
        memory: Some(32 << 20),
        ..StepLimits::default()
    };
    // busybox dd allocates its whole block: 128 MiB does not fit in 32.
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]);
    spec.limits = limits;
    let id = spec.container_id.clone();
    let (r, out, err) = fx.run(spec).await;
    let status = r.expect("the step runs");
    assert!(status.oom_killed, "{status:?}; {out} {err}");
    assert!(!status.success());
    assert_eq!(status.signal, Some(9), "{status:?}");
    assert!(status.to_string().contains("out of memory"), "{status}");
    assert_no_step_cgroups(&id);

    // Under the limit, the same program is a normal success.
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=4M", "count=4"]);
    spec.limits = limits;
    let id = spec.container_id.clone();
    let (r, _, err) = fx.run(spec).await;
    let status = r.expect("the step runs");
    assert!(status.success() && !status.oom_killed, "{status:?} {err}");
    assert_no_step_cgroups(&id);

    // A process killed with SIGKILL for another reason is not called OOM.
    // (PID 1 ignores signals from inside its namespace: kill a child.)
    let mut spec = fx.spec(&["sh", "-c", "sh -c 'kill -9 $$'; exit $?"]);
    spec.limits = limits;
    let (r, _, _) = fx.run(spec).await;
    let status = r.expect("the step runs");
    assert_eq!(status.signal, Some(9));
    assert!(!status.oom_killed, "{status:?}");
}

#[tokio::test]
async fn a_step_sees_its_limits_in_its_cgroup() {
    let Some(fx) = common::fixture("a_step_sees_its_limits_in_its_cgroup") else {
        return;
    };
    let mut spec = fx.spec(&[]);
    spec.limits = StepLimits {
        memory: Some(64 << 20),
        cpu_millis: Some(1500),
        pids: Some(77),
    };
    // cgroup v1 files, else v2's.
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                  cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max; \
                  cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max";
    let out = fx.sh(spec, script).await;
    let lines: Vec<&str> = out.lines().collect();
    let memory: u64 = lines[0].parse().expect("a number");
    // The container's own limit sits just above kiln's parent's.
    assert!(
        (64 << 20..=(64 << 20) + (2 << 20)).contains(&memory),
        "{out}"
    );
    assert_eq!(lines[1], "150000", "{out}");
    assert_eq!(lines[2], "77", "{out}");
}

#[tokio::test]
async fn a_step_past_its_timeout_is_killed_in_time() {
    let Some(fx) = common::fixture("a_step_past_its_timeout_is_killed_in_time") else {
        return;
    };
    let mut spec = fx.spec(&["sh", "-c", "echo started; sleep 60; echo never"]);
    spec.timeout = Some(Duration::from_millis(500));
    let start = Instant::now();
    let (r, out, err) = fx.run(spec).await;
    let took = start.elapsed();
    let status = r.expect("the step runs");
    assert!(status.timed_out, "{status:?} {err}");
    assert!(!status.success());
    assert_eq!(out, "started\n");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(fx.runc_list().is_empty(), "{:?}", fx.runc_list());

    // Finishing within the timeout is a normal end.
    let mut spec = fx.spec(&["true"]);
    spec.timeout = Some(Duration::from_secs(30));
    let status = fx.run(spec).await.0.expect("runs");
    assert!(status.success() && !status.timed_out, "{status:?}");
}

#[tokio::test]
async fn ulimits_set_by_the_step_replace_the_defaults() {
    let Some(fx) = common::fixture("ulimits_set_by_the_step_replace_the_defaults") else {
        return;
    };
    let mut spec = fx.spec(&[]);
    spec.rlimits = vec![
        Rlimit {
            name: "nofile".into(),
            soft: 4096,
            hard: 8192,
        },
        Rlimit {
            name: "core".into(),
            soft: 0,
            hard: 0,
        },
    ];
    let out = fx.sh(spec, "ulimit -n; ulimit -Hn; ulimit -c").await;
    assert_eq!(out, "4096\n8192\n0\n");

    let mut spec = fx.spec(&["true"]);
    spec.rlimits = vec![Rlimit {
        name: "files".into(),
        soft: 1,
        hard: 1,
    }];
    let err = fx.run(spec).await.0.expect_err("an unknown ulimit");
    assert!(
        err.to_string().contains("unknown ulimit \"files\""),
        "{err}"
    );
}

#[tokio::test]
async fn the_hostname_resolves_inside_the_step() {
    let Some(fx) = common::fixture("the_hostname_resolves_inside_the_step") else {
        return;
    };
    let script = "hostname; cat /etc/hostname; grep -c \"[[:space:]]$(hostname)\\$\" /etc/hosts; \
                  ping -c 1 -W 2 $(hostname) >/dev/null && echo resolves";
    let out = fx.sh(fx.spec(&[]), script).await;
    assert_eq!(out, "kiln\nkiln\n1\nresolves\n");

    let mut spec = fx.spec(&[]);
    spec.hostname = Some("builder-7".into());
    spec.network = kiln_exec::Network::Host;
    let out = fx.sh(spec, script).await;
    assert_eq!(out, "builder-7\nbuilder-7\n1\nresolves\n");

    let mut spec = fx.spec(&["true"]);
    spec.hostname = Some("bad_name".into());
    let err = fx.run(spec).await.0.expect_err("an invalid hostname");
    assert!(err.to_string().contains("RFC 1123"), "{err}");
}

/// kiln's parent cgroups of a step are gone once its run returned.
fn assert_no_step_cgroups(container_id: &str) {
    let name = container_id.to_string();
    let mut left = Vec::new();
    for entry in walkdir("/sys/fs/cgroup", 4) {
        if entry.file_name().is_some_and(|n| n == name.as_str()) {
            left.push(entry);
        }
    }
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// Directories under `root` down to `depth` levels (cgroupfs has no loops).
fn walkdir(root: &str, depth: usize) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut level = vec![std::path::PathBuf::from(root)];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(e.path());
                }
            }
        }
        out.extend(next.iter().cloned());
        level = next;
    }
    out
}
