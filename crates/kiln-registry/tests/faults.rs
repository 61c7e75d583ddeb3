//! Broken transfers: the registry dying mid-blob, and bytes that do not
//! match their digest, injected by a proxy in front of a real registry.
//!
//! Needs docker-registry and skopeo (and htpasswd from apache2-utils for
//! auth): skipped with a message when they are missing, unless
//! KILN_REQUIRE_REGISTRY is set (scripts/deps.sh installs them).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{options, put_busybox, Events};
use kiln_oci::Reference;
use kiln_registry::{blocking, Error};
use kiln_store::Store;
use kiln_testkit::{Fault, FaultAction, FaultProxy, TestRegistry};

#[test]
fn a_registry_killed_mid_blob_is_retried_and_the_blob_resumed_with_range() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "test/busybox:1");
    let (layer, size) = image.layers[0].clone();
    assert!(size > 100_000, "the layer must be big enough to cut");
    let cut_at = size / 3;

    let proxy = FaultProxy::start(&registry.host());
    let registry = Arc::new(Mutex::new(registry));
    let bounce = registry.clone();
    proxy.add_fault(
        Fault::on_get(&layer.to_string(), FaultAction::CutAfter(cut_at)).then(move || {
            let mut registry = bounce.lock().unwrap();
            registry.stop();
            // Down long enough for the client to fail an attempt or two.
            std::thread::sleep(Duration::from_millis(500));
            registry.restart();
        }),
    );

    let store = Store::open(dir.path().join("store")).unwrap();
    let busybox: Reference = format!("{}/test/busybox:1", proxy.host()).parse().unwrap();
    let opts = kiln_registry::RegistryOptions {
        attempts: 8,
        ..options(dir.path())
    };
    let events = Events::default();
    let pulled = blocking::pull(&store, &busybox, &opts, &|e| events.record(e))
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.lock().unwrap().log()));
    assert_eq!(pulled.manifest, image.manifest);
    store.verify_blob(&layer).unwrap();
    kiln_oci::load_image(&store, &busybox.to_string()).unwrap();

    let retried = events.retried();
    for (digest, error) in &retried {
        eprintln!("retried {digest}: {error}");
    }
    assert!(
        retried.iter().any(|(d, _)| d == &layer),
        "no retry reported: {:?}",
        events.all()
    );
    let layer_gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer.to_string()))
        .collect();
    assert!(
        layer_gets
            .iter()
            .any(|r| r.header("range") == Some(&format!("bytes={cut_at}-"))),
        "the retry did not resume with Range: {layer_gets:?}"
    );
    assert!(
        layer_gets
            .iter()
            .all(|r| r.header("range") != Some("bytes=0-")),
        "{layer_gets:?}"
    );
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_kept() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "test/busybox:1");
    let (layer, _) = image.layers[0].clone();
    let proxy = FaultProxy::start(&registry.host());
    proxy.add_fault(
        Fault::on_get(&layer.to_string(), FaultAction::CorruptByte(1000)).times(usize::MAX),
    );

    let store = Store::open(dir.path().join("store")).unwrap();
    let busybox: Reference = format!("{}/test/busybox:1", proxy.host()).parse().unwrap();
    let err = blocking::pull(&store, &busybox, &options(dir.path()), &|_| {}).unwrap_err();
    match &err {
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            assert!(what.contains(&layer.to_string()), "{what}");
            assert_eq!(expected, &layer.to_string());
            assert_ne!(actual, expected);
        }
        other => panic!("{other:?}"),
    }
    assert!(!store.has_blob(&layer), "the bad blob must not be stored");
    assert!(store
        .resolve_tag(&busybox.name_in_store())
        .unwrap()
        .is_none());
    assert!(!store.has_blob(&image.manifest));
    assert!(kiln_oci::load_image(&store, &busybox.to_string()).is_err());
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "test/busybox:1");
    let proxy = FaultProxy::start(&registry.host());
    proxy.add_fault(Fault::on_get("/manifests/", FaultAction::CorruptByte(30)).times(usize::MAX));
    let store = Store::open(dir.path().join("store")).unwrap();
    let opts = options(dir.path());
    for text in [
        format!("{}/test/busybox:1", proxy.host()),
        format!("{}/test/busybox@{}", proxy.host(), image.manifest),
    ] {
        let reference: Reference = text.parse().unwrap();
        let err = blocking::pull(&store, &reference, &opts, &|_| {}).unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { .. }) && err.to_string().contains("manifest"),
            "{text}: {err}"
        );
        assert!(store
            .resolve_tag(&reference.name_in_store())
            .unwrap()
            .is_none());
    }
    assert!(!store.has_blob(&image.manifest));
}
