//! Plain HTTP is for loopback and hosts the user named insecure. These
//! tests need no network: `.invalid` names never resolve.

use std::time::{Duration, Instant};

use kiln_registry::{blocking, Error, RegistryOptions};

fn options(dir: &std::path::Path, insecure: &[&str]) -> RegistryOptions {
    RegistryOptions {
        insecure: insecure.iter().map(|s| s.to_string()).collect(),
        credentials_file: Some(dir.join("auth.json")),
        docker_config_file: None,
        attempts: 1,
        retry_delay: Duration::from_millis(10),
        ..RegistryOptions::default()
    }
}

#[test]
fn plain_http_to_a_non_loopback_host_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = blocking::login(
        "http://registry.invalid:5000",
        "user",
        "password",
        &options(dir.path(), &[]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::PlainHttpRefused { host } if host == "registry.invalid:5000"),
        "{text}"
    );
    assert!(
        text.contains("--insecure-registry registry.invalid:5000"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!dir.path().join("auth.json").exists());
}

#[test]
fn naming_the_host_insecure_lifts_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    for insecure in ["registry.invalid:5000", "registry.invalid"] {
        let err = blocking::login(
            "http://registry.invalid:5000",
            "user",
            "password",
            &options(dir.path(), &[insecure]),
        )
        .unwrap_err();
        // It got as far as looking the name up, which fails.
        assert!(matches!(err, Error::Network { .. }), "{insecure}: {err}");
        assert!(
            err.to_string().contains("http://registry.invalid:5000/v2/"),
            "{err}"
        );
    }
    // Another port is another host.
    let err = blocking::login(
        "http://registry.invalid:5000",
        "user",
        "password",
        &options(dir.path(), &["registry.invalid:6000"]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::PlainHttpRefused { .. }), "{err}");
}

#[test]
fn loopback_needs_no_permission() {
    // A closed port on loopback: refused by the kernel, not by the policy.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let err = blocking::login(
        &format!("http://127.0.0.1:{port}"),
        "user",
        "password",
        &options(dir.path(), &[]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
}
