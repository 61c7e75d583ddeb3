//! Key derivation over whole graphs, with leaves supplied by a table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_graph::*;

#[derive(Default)]
struct Leaves {
    images: HashMap<String, Key>,
    dirs: HashMap<PathBuf, Key>,
    secrets: HashMap<String, Key>,
    host_dir_calls: usize,
}

impl LeafKeys for Leaves {
    type Error = String;
    fn image(&mut self, reference: &str) -> Result<Key, String> {
        self.images
            .get(reference)
            .copied()
            .ok_or_else(|| format!("image {reference} not found"))
    }
    fn host_directory(&mut self, path: &Path, _filter: &Filter) -> Result<Key, String> {
        self.host_dir_calls += 1;
        self.dirs.get(path).copied().ok_or_else(|| "no dir".into())
    }
    fn secret(&mut self, secret: &SecretNode) -> Result<Key, String> {
        self.secrets
            .get(&secret.name)
            .copied()
            .ok_or_else(|| "no secret".into())
    }
}

fn k(s: &str) -> Key {
    KeyBuilder::new("test").str(s).finish()
}

fn leaves() -> Leaves {
    let mut l = Leaves::default();
    l.images.insert("busybox".into(), k("busybox-manifest"));
    l.dirs.insert("/home/a/src".into(), k("content-1"));
    l.dirs.insert("/other/place/src".into(), k("content-1"));
    l.dirs.insert("/home/a/docs".into(), k("docs-1"));
    l.secrets.insert("token".into(), k("salted-secret-1"));
    l
}

fn from(r: &str) -> Container {
    Arc::new(ContainerNode {
        op: ContainerOp::From {
            reference: r.into(),
        },
    })
}
fn exec(parent: &Container, args: &[&str]) -> Container {
    Arc::new(ContainerNode {
        op: ContainerOp::Exec {
            parent: parent.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            expect: Expect::Success,
        },
    })
}
fn host(path: &str) -> Directory {
    Arc::new(DirectoryNode {
        op: DirectoryOp::Host {
            path: path.into(),
            filter: Filter::default(),
        },
    })
}
fn with_dir(parent: &Container, path: &str, dir: &Directory) -> Container {
    Arc::new(ContainerNode {
        op: ContainerOp::WithDirectory {
            parent: parent.clone(),
            path: path.into(),
            dir: dir.clone(),
        },
    })
}

fn pipeline(src: &str) -> Container {
    let base = exec(&from("busybox"), &["apk", "add", "make"]);
    exec(&with_dir(&base, "/src", &host(src)), &["make"])
}

#[test]
fn same_content_in_another_place_gives_the_same_key() {
    let mut keyer = Keyer::new(leaves());
    let a = keyer.container(&pipeline("/home/a/src")).unwrap();
    let b = keyer.container(&pipeline("/other/place/src")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn changed_input_changes_only_dependants() {
    let base = exec(&from("busybox"), &["apk", "add", "make"]);
    let build = exec(&with_dir(&base, "/src", &host("/home/a/src")), &["make"]);
    let mut keyer = Keyer::new(leaves());
    let base_before = keyer.container(&base).unwrap();
    let build_before = keyer.container(&build).unwrap();

    let mut changed = leaves();
    changed.dirs.insert("/home/a/src".into(), k("content-2"));
    let mut keyer = Keyer::new(changed);
    assert_eq!(keyer.container(&base).unwrap(), base_before);
    assert_ne!(keyer.container(&build).unwrap(), build_before);
}

#[test]
fn moved_tag_changes_the_key() {
    let c = exec(&from("busybox"), &["true"]);
    let before = Keyer::new(leaves()).container(&c).unwrap();
    let mut moved = leaves();
    moved
        .images
        .insert("busybox".into(), k("busybox-manifest-2"));
    assert_ne!(Keyer::new(moved).container(&c).unwrap(), before);
}

#[test]
fn every_exec_field_matters() {
    let base = from("busybox");
    let mut keyer = Keyer::new(leaves());
    let a = keyer.container(&exec(&base, &["echo", "a b"])).unwrap();
    let b = keyer.container(&exec(&base, &["echo a", "b"])).unwrap();
    let any = Arc::new(ContainerNode {
        op: ContainerOp::Exec {
            parent: base.clone(),
            args: vec!["echo".into(), "a b".into()],
            expect: Expect::Any,
        },
    });
    let c = keyer.container(&any).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, c);
}

#[test]
fn secret_enters_only_through_its_salted_key() {
    let secret = Arc::new(SecretNode {
        name: "token".into(),
        source: SecretSource::Env("TOKEN".into()),
    });
    let c = Arc::new(ContainerNode {
        op: ContainerOp::WithSecretVariable {
            parent: from("busybox"),
            name: "TOKEN".into(),
            secret,
        },
    });
    let c = exec(&c, &["deploy"]);
    let before = Keyer::new(leaves()).container(&c).unwrap();
    let mut rotated = leaves();
    rotated.secrets.insert("token".into(), k("salted-secret-2"));
    assert_ne!(
        Keyer::new(rotated).container(&c).unwrap(),
        before,
        "a new secret value re-runs the step"
    );
}

#[test]
fn cache_volume_mount_is_keyed_by_name_not_contents() {
    let mount = |name: &str| {
        Arc::new(ContainerNode {
            op: ContainerOp::WithMountedCache {
                parent: from("busybox"),
                path: "/cache".into(),
                volume: CacheVolume { name: name.into() },
                sharing: Sharing::Shared,
            },
        })
    };
    let mut keyer = Keyer::new(leaves());
    let a = keyer.container(&exec(&mount("go"), &["build"])).unwrap();
    let b = keyer.container(&exec(&mount("go"), &["build"])).unwrap();
    let c = keyer.container(&exec(&mount("npm"), &["build"])).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn shared_subgraph_is_keyed_once() {
    let src = host("/home/a/src");
    let base = from("busybox");
    let left = exec(&with_dir(&base, "/src", &src), &["test-a"]);
    let right = exec(&with_dir(&base, "/src", &src), &["test-b"]);
    let mut keyer = Keyer::new(leaves());
    keyer.container(&left).unwrap();
    keyer.container(&right).unwrap();
    assert_eq!(keyer.leaves().host_dir_calls, 1);
}

#[test]
fn deep_chains_do_not_overflow_the_stack() {
    let mut c = from("busybox");
    for i in 0..100_000 {
        c = Arc::new(ContainerNode {
            op: ContainerOp::WithEnv {
                parent: c,
                name: "N".into(),
                value: i.to_string(),
            },
        });
    }
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || Keyer::new(leaves()).container(&c).map(|k| k.to_hex()))
        .unwrap();
    assert_eq!(handle.join().unwrap().unwrap().len(), 64);
}

#[test]
fn leaf_errors_propagate() {
    let err = Keyer::new(leaves())
        .container(&exec(&from("missing:1"), &["x"]))
        .unwrap_err();
    assert!(err.contains("missing:1"));
}

#[test]
fn encoding_is_pinned() {
    // If this fails, the key encoding changed: bump ENCODING_VERSION on purpose
    // and update the pin, since every existing cache entry becomes unreachable.
    let key = KeyBuilder::new("exec").str("echo").u64(7).finish();
    assert_eq!(key.to_hex(), PINNED);
}

const PINNED: &str = "4b34dec8b108759b3629509ead74faee14db61348c4cae6e1e05f9bd9617e3a1";

#[test]
fn limits_leave_keys_alone_but_ulimits_and_hostnames_do_not() {
    let mut keyer = Keyer::new(leaves());
    let base = from("busybox");
    let plain = keyer.container(&exec(&base, &["make"])).unwrap();
    let limited = Arc::new(ContainerNode {
        op: ContainerOp::WithLimits {
            parent: base.clone(),
            limits: Limits {
                memory_bytes: Some(1 << 30),
                timeout: Some(std::time::Duration::from_secs(60)),
                ..Limits::default()
            },
            next_exec_only: true,
        },
    });
    assert_eq!(keyer.container(&exec(&limited, &["make"])).unwrap(), plain);

    let ulimited = Arc::new(ContainerNode {
        op: ContainerOp::WithUlimit {
            parent: base.clone(),
            name: "nofile".into(),
            soft: 65536,
            hard: 65536,
        },
    });
    assert_ne!(keyer.container(&exec(&ulimited, &["make"])).unwrap(), plain);
    let named = Arc::new(ContainerNode {
        op: ContainerOp::WithHostname {
            parent: base,
            hostname: "db".into(),
        },
    });
    assert_ne!(keyer.container(&exec(&named, &["make"])).unwrap(), plain);
}

#[test]
fn a_step_bound_to_a_service_is_keyed_by_the_service() {
    let mut images = leaves();
    for image in ["alpine", "postgres:15", "postgres:16"] {
        images.images.insert(image.into(), k(image));
    }
    let mut keyer = Keyer::new(images);
    let service = |image: &str, args: &[&str], readiness: Readiness| -> Service {
        Arc::new(ServiceNode {
            container: from(image),
            args: args.iter().map(|s| s.to_string()).collect(),
            ports: vec![5432],
            readiness,
        })
    };
    let bind = |svc: Service, alias: &str| -> Container {
        exec(
            &Arc::new(ContainerNode {
                op: ContainerOp::WithServiceBinding {
                    parent: from("alpine"),
                    alias: alias.into(),
                    service: svc,
                },
            }),
            &["make", "test"],
        )
    };
    let plain = keyer
        .container(&exec(&from("alpine"), &["make", "test"]))
        .unwrap();
    let db = keyer
        .container(&bind(
            service("postgres:15", &[], Readiness::default()),
            "db",
        ))
        .unwrap();
    assert_ne!(db, plain);
    // Another image, command or alias is another step.
    for other in [
        bind(service("postgres:16", &[], Readiness::default()), "db"),
        bind(
            service("postgres:15", &["postgres", "-F"], Readiness::default()),
            "db",
        ),
        bind(service("postgres:15", &[], Readiness::default()), "pg"),
    ] {
        assert_ne!(keyer.container(&other).unwrap(), db);
    }
    // When it is called ready is not part of the key.
    let patient = Readiness {
        log_line: Some("ready to accept connections".into()),
        timeout: Some(std::time::Duration::from_secs(300)),
        command: None,
    };
    assert_eq!(
        keyer
            .container(&bind(service("postgres:15", &[], patient), "db"))
            .unwrap(),
        db
    );
}
