//! Pulling and resolving against a real registry (Debian's docker-registry
//! on loopback, fixtures put in with skopeo; skipped with a message when
//! they are not installed, unless KILN_REQUIRE_REGISTRY is set).

mod common;

use common::{options, put_busybox, Events};
use kiln_oci::Reference;
use kiln_registry::{blocking, Error, PullProgress};
use kiln_store::{Digest, Store};
use kiln_testkit::TestRegistry;
use kiln_testkit::{
    host_oci_arch, write_oci_index_layout, Compression, ImageFixture, IndexStyle, LayerBuilder,
};
use serde_json::json;

fn reference(text: &str) -> Reference {
    text.parse().unwrap()
}

#[test]
fn pulls_busybox_into_the_store_and_a_second_pull_fetches_nothing() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "test/busybox:1");
    let store = Store::open(dir.path().join("store")).unwrap();
    let opts = options(dir.path());
    let busybox = reference(&format!("{}/test/busybox:1", registry.host()));

    let events = Events::default();
    let pulled = blocking::pull(&store, &busybox, &opts, &|e| events.record(e)).unwrap();
    assert_eq!(pulled.name, busybox.name_in_store());
    assert_eq!(pulled.manifest, image.manifest);

    // Stored as `kiln image import` stores: load_image finds it.
    let loaded = kiln_oci::load_image(&store, &busybox.to_string()).unwrap();
    assert_eq!(loaded.manifest_digest, image.manifest);
    assert_eq!(loaded.config_digest, image.config);
    assert_eq!(loaded.config.cmd, ["sh"]);
    let layers: Vec<Digest> = loaded.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        layers,
        image
            .layers
            .iter()
            .map(|(d, _)| d.clone())
            .collect::<Vec<_>>()
    );
    let mut expected_pins = vec![image.manifest.clone(), image.config.clone()];
    expected_pins.extend(layers.iter().cloned());
    let tag = store
        .resolve_tag(&busybox.name_in_store())
        .unwrap()
        .unwrap();
    assert_eq!(tag.blobs, expected_pins);
    for blob in &expected_pins {
        store.verify_blob(blob).unwrap();
    }
    // The layer is a real one: it unpacks to busybox.
    let unpacked = kiln_oci::ensure_unpacked(&store, &loaded.layers[0]).unwrap();
    assert!(unpacked.join("bin/busybox").is_file());

    let mut started = events.started();
    started.sort();
    let mut blobs = vec![image.config.clone(), image.layers[0].0.clone()];
    blobs.sort();
    assert_eq!(started, blobs, "config and layer fetched once each");
    assert_eq!(events.done().len(), 2);
    let (layer, layer_size) = &image.layers[0];
    assert!(events.all().iter().any(|e| matches!(e,
        PullProgress::Received { digest, received, size }
            if digest == layer && received == layer_size && size == layer_size)));
    assert!(matches!(&events.all()[0],
        PullProgress::Resolved { manifest, blobs: 2, .. } if manifest == &image.manifest));

    let again = Events::default();
    let second = pull_recording(&store, &busybox, &opts, &again);
    assert_eq!(second.manifest, image.manifest);
    assert!(again.started().is_empty(), "{:?}", again.all());
    assert_eq!(again.present().len(), 2);
}

fn pull_recording(
    store: &Store,
    reference: &Reference,
    opts: &kiln_registry::RegistryOptions,
    events: &Events,
) -> kiln_registry::Pulled {
    blocking::pull(store, reference, opts, &|e| events.record(e)).unwrap()
}

#[test]
fn pulls_by_digest_and_resolves_tags_and_digests() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "test/busybox:1");
    let store = Store::open(dir.path().join("store")).unwrap();
    let opts = options(dir.path());
    let host = registry.host();

    let by_tag = reference(&format!("{host}/test/busybox:1"));
    assert_eq!(blocking::resolve(&by_tag, &opts).unwrap(), image.manifest);

    let by_digest = reference(&format!("{host}/test/busybox@{}", image.manifest));
    assert_eq!(
        blocking::resolve(&by_digest, &opts).unwrap(),
        image.manifest
    );
    let pulled = blocking::pull(&store, &by_digest, &opts, &|_| {}).unwrap();
    assert_eq!(
        pulled.name,
        format!("{host}/test/busybox@{}", image.manifest)
    );
    assert_eq!(pulled.manifest, image.manifest);
    let loaded = kiln_oci::load_image(&store, &by_digest.to_string()).unwrap();
    assert_eq!(loaded.config_digest, image.config);

    // A tag and a digest the registry does not have.
    let missing_tag = reference(&format!("{host}/test/busybox:nope"));
    match blocking::resolve(&missing_tag, &opts) {
        Err(Error::NotFound { what, .. }) => assert!(what.contains("busybox:nope"), "{what}"),
        other => panic!("{other:?}"),
    }
    let absent = Digest::of(b"not a manifest");
    let missing_digest = reference(&format!("{host}/test/busybox@{absent}"));
    let err = blocking::pull(&store, &missing_digest, &opts, &|_| {}).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }) && err.to_string().contains(&absent.to_string()),
        "{err}"
    );
    assert!(store
        .resolve_tag(&missing_digest.name_in_store())
        .unwrap()
        .is_none());
}

fn arch_image(arch: &str) -> ImageFixture {
    ImageFixture::new(json!({"Env": [format!("ARCH={arch}")]}), None).layer(
        LayerBuilder::new()
            .file("arch", arch.as_bytes(), 0o644)
            .tar(),
        Compression::Gzip,
    )
}

#[test]
fn an_image_index_resolves_to_the_host_platform() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host_arch = host_oci_arch();
    let other = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let layout = dir.path().join("multi");
    let written = write_oci_index_layout(
        &layout,
        "multi:1",
        &[
            (other, arch_image(other)),
            (host_arch, arch_image(host_arch)),
        ],
        IndexStyle::Nested,
    );
    registry.skopeo_copy(
        &format!("oci:{}:multi:1", layout.display()),
        &format!("docker://{}/test/multi:1", registry.host()),
    );
    let index_digest: Digest = written.index_digest.unwrap().parse().unwrap();
    let platform = |arch: &str| -> Digest {
        let (_, image) = written.platforms.iter().find(|(a, _)| a == arch).unwrap();
        image.manifest_digest.as_ref().unwrap().parse().unwrap()
    };
    let opts = options(dir.path());
    let multi = reference(&format!("{}/test/multi:1", registry.host()));

    assert_eq!(
        blocking::resolve(&multi, &opts).unwrap(),
        platform(host_arch)
    );
    // A digest naming the index resolves the same way.
    let by_index = reference(&format!("{}/test/multi@{index_digest}", registry.host()));
    assert_eq!(
        blocking::resolve(&by_index, &opts).unwrap(),
        platform(host_arch)
    );

    let store = Store::open(dir.path().join("store")).unwrap();
    let pulled = blocking::pull(&store, &multi, &opts, &|_| {}).unwrap();
    assert_eq!(pulled.manifest, platform(host_arch));
    let loaded = kiln_oci::load_image(&store, &multi.to_string()).unwrap();
    assert_eq!(loaded.config.env, [format!("ARCH={host_arch}")]);
    assert!(!store.has_blob(&platform(other)));
    assert!(
        !store.has_blob(&index_digest),
        "only image manifests are kept"
    );
}

#[test]
fn an_index_without_the_host_platform_names_the_ones_offered() {
    let Some(registry) = TestRegistry::start(None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let foreign: Vec<&str> = ["s390x", "riscv64", "ppc64le"]
        .into_iter()
        .filter(|a| *a != host_oci_arch())
        .take(2)
        .collect();
    let layout = dir.path().join("foreign");
    write_oci_index_layout(
        &layout,
        "foreign:1",
        &[
            (foreign[0], arch_image(foreign[0])),
            (foreign[1], arch_image(foreign[1])),
        ],
        IndexStyle::Nested,
    );
    registry.skopeo_copy(
        &format!("oci:{}:foreign:1", layout.display()),
        &format!("docker://{}/test/foreign:1", registry.host()),
    );
    let store = Store::open(dir.path().join("store")).unwrap();
    let foreign_ref = reference(&format!("{}/test/foreign:1", registry.host()));
    let err = blocking::pull(&store, &foreign_ref, &options(dir.path()), &|_| {}).unwrap_err();
    match &err {
        Error::NoPlatform {
            wanted, available, ..
        } => {
            assert_eq!(wanted, &format!("linux/{}", host_oci_arch()));
            for arch in &foreign {
                assert!(available.contains(&format!("linux/{arch}")), "{available}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(store
        .resolve_tag(&foreign_ref.name_in_store())
        .unwrap()
        .is_none());
}
