//! Services from kiln.star end to end: `as_service`, `with_service_binding`,
//! `with_exposed_port`, `endpoint()`, readiness options, the service's own
//! progress step, and nothing left behind when `kiln call` ends. Needs root,
//! runc and slirp4netns.

mod common;

use common::{privileged, text, Env};

const PIPELINE: &str = r#"
def web(body):
    return (container("busybox:test")
        .with_exposed_port(8080)
        .as_service(args = ["sh", "-c", "mkdir -p /www && echo " + body + " > /www/index.html && echo listening && exec httpd -f -p 8080 -h /www"],
                    ready_log = "listening", ready_timeout = "30s"))

def fetch(body: str = "hello") -> str:
    """Two steps bound to one service, one by alias, one by endpoint."""
    db = web(body)
    by_alias = (container("busybox:test")
        .with_service_binding("db", db)
        .with_exec(["wget", "-q", "-O-", "http://db:8080/"])
        .stdout())
    by_endpoint = (container("busybox:test")
        .with_service_binding("web", db)
        .with_exec(["wget", "-q", "-O-", "http://" + db.endpoint() + "/"])
        .stdout())
    return by_alias.strip() + " " + by_endpoint.strip()

def never() -> str:
    """A service that never listens."""
    svc = container("busybox:test").as_service(args = ["sleep", "600"], ports = [5432], ready_timeout = "1s")
    return container("busybox:test").with_service_binding("db", svc).with_exec(["true"]).stdout()

def bad_port() -> str:
    """A port out of range."""
    return container("busybox:test").with_exposed_port(70000).with_exec(["true"]).stdout()
"#;

#[test]
fn a_pipeline_reaches_its_service_and_leaves_nothing_running() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("services", &[("kiln.star", PIPELINE)]);
    let m = module.to_str().unwrap();
    let out = env.kiln(&["call", "-m", m, "fetch", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let result = events.last().expect("a result event");
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["value"], "hello hello", "{result}");
    // The service is a step of its own: started once, its output shown,
    // finished when the run ended.
    let service_steps: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| {
            e["event"] == "started" && e["name"].as_str().unwrap_or("").starts_with("service ")
        })
        .collect();
    assert_eq!(service_steps.len(), 1, "{stdout}");
    let step = &service_steps[0]["step"];
    assert!(events.iter().any(|e| e["event"] == "output"
        && &e["step"] == step
        && e["data"].as_str().unwrap_or("").contains("listening")));
    assert!(events
        .iter()
        .any(|e| e["event"] == "finished" && &e["step"] == step));
    // Nothing outlives the run: no container, and no slirp4netns serving
    // a namespace that is gone (other tests may have live ones).
    assert_eq!(env.runc_list(), Vec::<String>::new());
    assert_eq!(orphaned_slirps(), Vec::<String>::new());
}

/// slirp4netns processes whose kiln namespace no longer exists.
fn orphaned_slirps() -> Vec<String> {
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("slirp4netns")) {
            continue;
        }
        if let Some(ns) = args.iter().find(|a| a.contains("/kiln/netns/")) {
            if !std::path::Path::new(ns).exists() {
                orphans.push(args.join(" "));
            }
        }
    }
    orphans
}

#[test]
fn a_service_that_is_never_ready_fails_the_call_clearly() {
    if !privileged() {
        return;
    }
    let env = Env::with_busybox(kiln_testkit::Compression::Gzip);
    let module = env.module("services", &[("kiln.star", PIPELINE)]);
    let m = module.to_str().unwrap();
    let out = env.kiln(&["call", "-m", m, "never", "--progress", "plain"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "service `sleep 600` was not ready after 1 s: port 5432 accepts no connections"
        ),
        "{stderr}"
    );
    let out = env.kiln(&["call", "-m", m, "bad_port"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("port 70000 is not a TCP port"), "{stderr}");
    assert_eq!(env.runc_list(), Vec::<String>::new());
}

/// The packages of examples/db-tests' image (scripts/setup.sh builds the
/// same one).
const DB_EXAMPLE_PACKAGES: &[&str] = &["postgresql", "python3-psycopg2"];

#[test]
fn the_db_tests_example_runs_its_suite_against_postgres() {
    let Some(env) = common::debian_env(DB_EXAMPLE_PACKAGES, "debian:postgres") else {
        return;
    };
    let example = common::repo().join("examples/db-tests");
    let m = example.to_str().unwrap();
    let out = env.kiln(&["run", "-m", m, "--progress", "plain"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("database system is ready to accept connections"),
        "{stderr}"
    );
    assert!(stderr.contains("Ran 6 tests"), "{stderr}");
    assert!(
        stderr.contains("\nOK\n") || stderr.contains("| OK\n"),
        "{stderr}"
    );
    // Again: the suite is cached, and so PostgreSQL never starts.
    let out = env.kiln(&["run", "-m", m, "--progress", "plain"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CACHED exec python3 -m unittest"),
        "{stderr}"
    );
    assert!(!stderr.contains("service `"), "{stderr}");
    assert_eq!(env.runc_list(), Vec::<String>::new());
}
