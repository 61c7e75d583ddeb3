//! Pipelines that run real containers. These need root and runc; without
//! them each test prints why and passes, unless KILN_REQUIRE_PRIVILEGED is set.

mod common;

use std::time::Duration;

use common::*;
use kiln_starlark::{ArgValue, Error, Output};

const PIPELINE: &str = r#"
def hello() -> str:
    """Says hi."""
    return container("busybox:test").with_exec(["echo", "hi"]).stdout()

def _waiter(me: str, other: str) -> Container:
    # Each side marks itself, then waits (bounded) for the other: only
    # finishes if both run at the same time.
    script = "touch /sync/{me}; i=0; while [ ! -e /sync/{other} ]; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.1; done; echo {me} saw {other}".format(me = me, other = other)
    return (container("busybox:test")
        .with_mounted_cache("/sync", cache_volume("sync"))
        .with_exec(["sh", "-c", script]))

def pair() -> list[Container]:
    """Two containers that wait for each other."""
    return [_waiter("left", "right"), _waiter("right", "left")]

def leak(token: Secret) -> str:
    """Prints a secret (which kiln masks)."""
    return (container("busybox:test")
        .with_secret_variable("TOKEN", token)
        .with_exec(["sh", "-c", "echo token=$TOKEN"])
        .stdout())

def count(salt: str) -> Container:
    """Bumps a counter in a cache volume each time the step really runs."""
    bump = "n=$(cat /count/runs 2>/dev/null || echo 0); echo $((n+1)) > /count/runs"
    return (container("busybox:test")
        .with_mounted_cache("/count", cache_volume("counter"), sharing = "locked")
        .with_exec(["sh", "-c", bump + "; : " + salt]))

def broken() -> str:
    """A step that fails."""
    return container("busybox:test").with_exec(["sh", "-c", "echo oops; exit 3"]).stdout()

def broken_lazily() -> Container:
    """Returns a container whose step fails when solved."""
    return container("busybox:test").with_exec(["sh", "-c", "echo late; exit 5"])

def tour() -> list:
    """Exercises the methods."""
    c = (container("busybox:test")
        .with_new_file("/w/a.txt", "A", permissions = 0o600)
        .with_workdir("/w")
        .with_env_variable("GREETING", "hey")
        .with_exec(["sh", "-c", "echo $GREETING > b.txt; stat -c %a a.txt >&2; exit 4"], expect = "any"))
    d = c.directory("/w").without("a.txt").with_new_file("c.txt", "C")
    return [c.exit_code(), c.stderr(), d.entries(), c.file("/w/b.txt").contents(), d.file("c.txt").contents()]

def tour2(token: Secret) -> list:
    """Exercises the rest of the methods."""
    base = container("busybox:test").with_env_variable("A", "1").without_env_variable("A")
    d = directory().with_new_file("x.txt", "X").with_directory("sub", directory().with_new_file("y.txt", "Y"))
    f = d.file("x.txt")
    files = (base.with_file("/f/x.txt", f)
        .with_mounted_directory("/m", d)
        .with_exec(["sh", "-c", "echo ${A:-unset} $(cat /f/x.txt) $(cat /m/sub/y.txt)"]))
    secret = base.with_mounted_secret("/run/secrets/t", token).with_exec(["cat", "/run/secrets/t"])
    user = base.with_user("65534").with_exec(["id", "-u"])
    # Configuration only: with_exec runs its arguments as given.
    entrypoint = base.with_entrypoint(["echo", "ep"]).with_exec(["echo", "arg"])
    offline = base.with_network(False).with_exec(["true"]).sync()
    return [
        files.stdout(),
        secret.stdout(),
        user.stdout(),
        entrypoint.stdout(),
        offline.exit_code(),
        d.digest().startswith("blake3:"),
        f.digest().startswith("sha256:"),
        f"{len(d.entries())} entries",
    ]

def source(src: Directory) -> str:
    """Lists a host directory, filtered."""
    return (container("busybox:test")
        .with_directory("/src", src, exclude = ["*.log"])
        .with_exec(["ls", "/src"])
        .stdout())
"#;

#[test]
fn stdout_of_a_step() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let out = ok(repo.pipeline().call("hello", vec![]));
    assert!(matches!(&out, Output::Str(s) if s == "hi\n"), "{out:?}");
}

#[test]
fn list_elements_solve_in_parallel() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let out = ok(repo.pipeline().call("pair", vec![]));
    let Output::List(items) = &out else {
        panic!("expected a list, got {out:?}");
    };
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| matches!(i, Output::Container(_))));
    // Sequential solving would deadlock until the first waiter gives up.
    let solved = repo
        .runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), kiln_starlark::solve(out)).await
        })
        .expect("solve timed out")
        .expect("both waiters succeed");
    let Output::List(items) = solved else {
        panic!("solve changed the shape");
    };
    let mut seen = Vec::new();
    for item in items {
        let Output::Container(c) = item else {
            panic!("solve changed the shape");
        };
        seen.push(repo.runtime.block_on(c.stdout()).expect("stdout"));
    }
    assert_eq!(seen, vec!["left saw right\n", "right saw left\n"]);
}

#[test]
fn secret_values_are_masked() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let secret_file = repo.outside("token");
    write(&secret_file, "correct-horse-battery");
    let token = repo.engine.secret_from_file(&secret_file).expect("secret");
    let out = ok(repo
        .pipeline()
        .call("leak", vec![("token".into(), ArgValue::Secret(token))]));
    match out {
        Output::Str(s) => {
            assert_eq!(s, "token=***\n");
            assert!(!s.contains("correct-horse"));
        }
        other => panic!("expected a string, got {other:?}"),
    }
}

#[test]
fn cache_is_reused_across_engines_sharing_a_store() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let run = |engine: kiln_engine::Engine, salt: &str| {
        let pipeline = ok(repo.load_with(engine));
        let out = ok(pipeline.call("count", vec![("salt".into(), ArgValue::Str(salt.into()))]));
        repo.solve(out).expect("solve");
    };
    run(repo.engine.clone(), "a");
    assert_eq!(repo.counter("counter", "runs"), 1);
    // Another process's engine on the same store: the step is cached.
    run(open_engine(&repo.store()), "a");
    assert_eq!(repo.counter("counter", "runs"), 1);
    // A different step does run, so the counter does count.
    run(open_engine(&repo.store()), "b");
    assert_eq!(repo.counter("counter", "runs"), 2);
}

#[test]
fn step_failure_is_an_engine_error() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let pipeline = repo.pipeline();
    match err(pipeline.call("broken", vec![])) {
        Error::Engine(kiln_engine::Error::StepFailed(failure)) => {
            assert_eq!(failure.exit_code, Some(3));
            assert!(failure.command.contains("exit 3"), "{}", failure.command);
            assert!(
                failure.output_tail.contains("oops"),
                "{}",
                failure.output_tail
            );
        }
        other => panic!("expected StepFailed, got {other:?}: {other}"),
    }
    // Failing while solving the returned value: the same error from solve().
    let out = ok(pipeline.call("broken_lazily", vec![]));
    match repo.solve(out) {
        Err(kiln_engine::Error::StepFailed(failure)) => {
            assert_eq!(failure.exit_code, Some(5));
            assert!(failure.output_tail.contains("late"));
        }
        Err(other) => panic!("expected StepFailed, got {other:?}"),
        Ok(_) => panic!("expected the step to fail"),
    }
}

#[test]
fn methods_tour() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let out = ok(repo.pipeline().call("tour", vec![]));
    let Output::List(items) = out else {
        panic!("expected a list, got {out:?}");
    };
    let items: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
    assert_eq!(
        items,
        vec![
            "Int(4)",
            "Str(\"600\\n\")",
            "[Str(\"b.txt\"), Str(\"c.txt\")]",
            "Str(\"hey\\n\")",
            "Str(\"C\")",
        ]
    );
}

#[test]
fn methods_tour_continued() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let secret_file = repo.outside("token");
    write(&secret_file, "mounted-secret-value");
    let token = repo.engine.secret_from_file(&secret_file).expect("secret");
    let out = ok(repo
        .pipeline()
        .call("tour2", vec![("token".into(), ArgValue::Secret(token))]));
    assert_eq!(
        format!("{out:?}"),
        "[Str(\"unset X Y\\n\"), Str(\"***\"), Str(\"65534\\n\"), Str(\"arg\\n\"), \
         Int(0), Bool(true), Bool(true), Str(\"2 entries\")]"
    );
}

#[test]
fn host_directory_parameter_with_exclude() {
    if !privileged() {
        return;
    }
    let repo = Repo::with_busybox(&[("kiln.star", PIPELINE)]);
    let src = repo.outside("src");
    write(&src.join("main.go"), "package main\n");
    write(&src.join("debug.log"), "noise\n");
    let dir = ArgValue::Directory(repo.engine.host_directory(&src));
    let out = ok(repo.pipeline().call("source", vec![("src".into(), dir)]));
    assert!(
        matches!(&out, Output::Str(s) if s == "main.go\n"),
        "{out:?}"
    );
}
