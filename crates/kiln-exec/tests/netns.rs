//! Shared network namespaces: a service and a client in one namespace talk
//! over loopback by name; two namespaces with a service on the same port do
//! not collide; outbound network goes through slirp4netns, which keeps the
//! host's loopback out of reach. Needs root, runc and slirp4netns
//! (scripts/deps.sh installs it).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_exec::{JoinedNetwork, NetNamespace, Network, Outbound};

fn slirp() -> Option<PathBuf> {
    ["/usr/bin/slirp4netns", "/bin/slirp4netns"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn joined(ns: &NetNamespace, alias: &str) -> Network {
    Network::Joined(JoinedNetwork {
        netns: ns.path().to_owned(),
        hosts: vec![("127.0.0.1".into(), vec![alias.into()])],
        nameservers: ns.nameservers(),
    })
}

/// Waits (bounded) until the namespace accepts connections on `port`.
fn wait_for_port(ns: &NetNamespace, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ns
            .accepts_tcp(port, Duration::from_millis(200))
            .expect("probe")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listened on {port} in {}", ns.path().display());
}

fn serve_script(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www")
}

// Multi-threaded: the probes block while the services' tasks start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_a_namespace_with_their_clients_and_runs_do_not_collide() {
    let Some(fx) = common::fixture("services_share_a_namespace") else {
        return;
    };
    let Some(slirp) = slirp() else {
        if std::env::var_os("KILN_REQUIRE_RUNC").is_some() {
            panic!("slirp4netns is not installed (scripts/deps.sh installs it)");
        }
        eprintln!("SKIPPED services_share_a_namespace: slirp4netns is not installed");
        return;
    };
    let outbound = Outbound::Slirp { binary: slirp };
    let dir = fx.path().join("netns");
    std::fs::create_dir_all(&dir).unwrap();
    let a = NetNamespace::create(&dir.join(format!("{}-a", std::process::id())), &outbound)
        .expect("namespace a");
    let b = NetNamespace::create(&dir.join(format!("{}-b", std::process::id())), &outbound)
        .expect("namespace b");

    // Two services on port 8080, one per namespace, at the same time.
    let mut services = Vec::new();
    for (ns, body) in [(&a, "from-a"), (&b, "from-b")] {
        let mut spec = fx.spec(&["sh", "-c", &serve_script(body)]);
        spec.network = joined(ns, "svc");
        let runtime = fx.runtime.clone();
        services.push(tokio::spawn(
            async move { runtime.run(spec, |_, _| None).await },
        ));
    }
    wait_for_port(&a, 8080);
    wait_for_port(&b, 8080);

    for (ns, body) in [(&a, "from-a"), (&b, "from-b")] {
        let mut spec = fx.spec(&[]);
        spec.network = joined(ns, "db");
        let out = fx
            .sh(
                spec,
                "wget -q -O- http://db:8080/ && cat /etc/resolv.conf && ip route",
            )
            .await;
        assert!(out.starts_with(&format!("{body}\n")), "{out}");
        // Outbound goes through slirp4netns's gateway and resolver.
        assert!(out.contains("nameserver 10.0.2.3"), "{out}");
        assert!(out.contains("default via 10.0.2.2 dev tap0"), "{out}");
    }

    // The host's loopback is out of reach through the gateway.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let mut spec = fx.spec(&[]);
    spec.network = joined(&a, "db");
    let out = fx
        .sh(
            spec,
            &format!(
                "if echo hi | nc -w 2 10.0.2.2 {port}; then echo reached; else echo refused; fi"
            ),
        )
        .await;
    assert!(out.contains("refused"), "{out}");

    for service in services {
        service.abort();
        let _ = service.await;
    }
    let (a_path, b_path) = (a.path().to_owned(), b.path().to_owned());
    drop(a);
    drop(b);
    assert!(!a_path.exists() && !b_path.exists());
    assert!(no_slirp_for(&a_path) && no_slirp_for(&b_path));
    assert!(fx.runc_list().is_empty(), "{:?}", fx.runc_list());
}

#[test]
fn a_namespace_without_outbound_has_no_resolver_and_stale_ones_are_removed() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED a_namespace_without_outbound_has_no_resolver: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNamespace::create(&dir.path().join("1-x"), &Outbound::None).unwrap();
    assert!(ns.nameservers().is_empty());
    assert!(!ns.accepts_tcp(9, Duration::from_millis(100)).unwrap());
    std::mem::forget(ns);
    // "1-x" names a live pid (init); a dead pid's namespace is removed.
    let dead = dir.path().join(format!("{}-y", i32::MAX));
    let stale = NetNamespace::create(&dead, &Outbound::None).unwrap();
    std::mem::forget(stale);
    assert_eq!(kiln_exec::cleanup_stale_namespaces(dir.path()), 1);
    assert!(!dead.exists());
    assert!(dir.path().join("1-x").exists());
    let _ = rustix::mount::unmount(dir.path().join("1-x"), rustix::mount::UnmountFlags::DETACH);
}

/// Whether no slirp4netns process serves the namespace at `path`.
fn no_slirp_for(path: &Path) -> bool {
    let needle = path.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        });
        if !found {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
