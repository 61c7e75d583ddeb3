//! Pushing images of the store to a real registry.
//!
//! Needs docker-registry and skopeo (and htpasswd from apache2-utils for
//! auth): skipped with a message when they are missing, unless
//! KILN_REQUIRE_REGISTRY is set (scripts/deps.sh installs them).

mod common;

use common::{options, put_busybox, read_layout};
use kiln_oci::Reference;
use kiln_registry::{blocking, Error};
use kiln_store::{Digest, Store};
use kiln_testkit::Compression;
use kiln_testkit::{FaultProxy, ProxiedRequest, TestRegistry};

fn count(requests: &[ProxiedRequest], method: &str, path_part: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.method == method && r.path.contains(path_part))
        .count()
}

#[test]
fn pushes_an_imported_image_byte_for_byte_and_skips_blobs_the_registry_has() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = kiln_testkit::busybox_image(dir.path(), Compression::Gzip);
    let store = Store::open(dir.path().join("store")).unwrap();
    let imported = kiln_oci::import(&store, &layout, None).unwrap();
    let manifest = imported[0].manifest_digest.clone();
    assert_eq!(manifest, read_layout(&layout).manifest);

    // Through the proxy, to see which requests go out.
    let proxy = FaultProxy::start(&registry.host());
    let target: Reference = format!("{}/test/pushed:1", proxy.host()).parse().unwrap();
    let opts = options(dir.path());
    let pushed = blocking::push(&store, &manifest, &target, &opts).unwrap();
    assert_eq!(pushed, manifest);

    let raw = registry.skopeo_inspect_raw(&format!("docker://{}/test/pushed:1", registry.host()));
    assert_eq!(
        Digest::of(&raw),
        manifest,
        "the registry serves another manifest"
    );
    assert_eq!(raw, store.read_blob(&manifest).unwrap());

    let first = proxy.requests();
    assert_eq!(
        count(&first, "POST", "/v2/test/pushed/blobs/uploads/"),
        2,
        "config and layer uploaded: {first:?}"
    );
    assert_eq!(count(&first, "PUT", "/v2/test/pushed/manifests/1"), 1);

    proxy.clear_requests();
    assert_eq!(
        blocking::push(&store, &manifest, &target, &opts).unwrap(),
        manifest
    );
    let second = proxy.requests();
    assert_eq!(
        count(&second, "POST", "/blobs/uploads/"),
        0,
        "no blob uploaded again: {second:?}"
    );
    assert_eq!(count(&second, "HEAD", "/v2/test/pushed/blobs/sha256:"), 2);

    // By digest: no tag is created, the manifest is there by digest.
    let by_digest: Reference = format!("{}/test/bydigest@{manifest}", registry.host())
        .parse()
        .unwrap();
    assert_eq!(
        blocking::push(&store, &manifest, &by_digest, &opts).unwrap(),
        manifest
    );
    assert_eq!(blocking::resolve(&by_digest, &opts).unwrap(), manifest);
}

#[test]
fn registry_to_kiln_to_registry_keeps_every_digest() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "test/source:1");
    let host = registry.host();
    let store = Store::open(dir.path().join("store")).unwrap();
    let opts = options(dir.path());
    let source: Reference = format!("{host}/test/source:1").parse().unwrap();
    let pulled = blocking::pull(&store, &source, &opts, &|_| {}).unwrap();

    let copy: Reference = format!("{host}/other/copy:2").parse().unwrap();
    let pushed = blocking::push(&store, &pulled.manifest, &copy, &opts).unwrap();
    assert_eq!(pushed, image.manifest);
    let original = registry.skopeo_inspect_raw(&format!("docker://{host}/test/source:1"));
    let copied = registry.skopeo_inspect_raw(&format!("docker://{host}/other/copy:2"));
    assert_eq!(original, copied);
    assert_eq!(Digest::of(&copied), image.manifest);
    // The copy pulls back to the same image.
    let again = Store::open(dir.path().join("store2")).unwrap();
    let back = blocking::pull(&again, &copy, &opts, &|_| {}).unwrap();
    assert_eq!(back.manifest, image.manifest);
    let loaded = kiln_oci::load_image(&again, &copy.to_string()).unwrap();
    assert_eq!(loaded.config_digest, image.config);
}

#[test]
fn push_refuses_a_target_digest_that_is_not_the_image() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = kiln_testkit::busybox_image(dir.path(), Compression::None);
    let store = Store::open(dir.path().join("store")).unwrap();
    let manifest = kiln_oci::import(&store, &layout, None).unwrap()[0]
        .manifest_digest
        .clone();
    let other = Digest::of(b"something else");
    let target: Reference = format!("{}/test/x@{other}", registry.host())
        .parse()
        .unwrap();
    let err = blocking::push(&store, &manifest, &target, &options(dir.path())).unwrap_err();
    assert!(
        matches!(err, Error::BadManifest { .. })
            && err.to_string().contains(&other.to_string())
            && err.to_string().contains(&manifest.to_string()),
        "{err}"
    );
    // An image that is not in the store.
    let absent = Digest::of(b"absent");
    let tagged: Reference = format!("{}/test/x:1", registry.host()).parse().unwrap();
    let err = blocking::push(&store, &absent, &tagged, &options(dir.path())).unwrap_err();
    assert!(err.to_string().contains(&absent.to_string()), "{err}");
}
