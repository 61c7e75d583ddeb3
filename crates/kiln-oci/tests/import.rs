//! Importing images in every supported format and compression into a real
//! store, then loading, listing and unpacking them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::temp_store;
use kiln_oci::{ensure_unpacked, import, list_images, load_image, Error, ImageConfig, LayerRef};
use kiln_store::{Digest, Store};
use kiln_testkit::{
    busybox_fixture, busybox_image, host_oci_arch, sha256_digest, write_docker_save,
    write_docker_save_images, write_oci_archive, write_oci_index_layout, write_oci_layout,
    write_oci_layout_images, Compression, ImageFixture, IndexStyle, LayerBuilder, WrittenImage,
    DEFAULT_PATH_ENV,
};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Layout,
    Archive,
    DockerSave,
}

const FORMATS: [Format; 3] = [Format::Layout, Format::Archive, Format::DockerSave];

fn write(format: Format, dir: &Path, image: &ImageFixture) -> (PathBuf, WrittenImage) {
    match format {
        Format::Layout => {
            let p = dir.join("layout");
            (p.clone(), write_oci_layout(&p, image))
        }
        Format::Archive => {
            // No .tar extension: the format is detected from content.
            let p = dir.join("image.oci");
            (p.clone(), write_oci_archive(&p, image))
        }
        Format::DockerSave => {
            let p = dir.join("saved");
            (p.clone(), write_docker_save(&p, image))
        }
    }
}

/// A small two-layer image: a base and a layer deleting and adding files.
fn small_image(compression: Compression, name: Option<&str>) -> ImageFixture {
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"ID=kiln-test\n", 0o644)
        .file("etc/motd", b"hello\n", 0o644)
        .tar();
    let top = LayerBuilder::new()
        .whiteout("etc/motd")
        .dir("app", 0o755)
        .file("app/run", b"#!/bin/sh\necho hi\n", 0o755)
        .tar();
    ImageFixture::new(
        json!({
            "Env": [DEFAULT_PATH_ENV, "GREETING=hi"],
            "WorkingDir": "/app",
            "User": "1000:1000",
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["/app/run"],
        }),
        name,
    )
    .layer(base, compression)
    .layer(top, compression)
}

fn blob_count(store: &Store) -> usize {
    std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn every_format_and_compression_imports_loads_and_unpacks() {
    for format in FORMATS {
        for compression in Compression::ALL {
            let what = format!("{format:?}/{compression:?}");
            let (tmp, store) = temp_store();
            let (path, written) = write(
                format,
                tmp.path(),
                &small_image(compression, Some("kiln/test:1")),
            );

            let imported = import(&store, &path, None).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(imported.len(), 1, "{what}");
            let img = &imported[0];
            assert_eq!(img.name, "docker.io/kiln/test:1", "{what}");
            assert_eq!(img.size_bytes, written.size_bytes, "{what}");
            if let Some(m) = &written.manifest_digest {
                assert_eq!(
                    &img.manifest_digest.to_string(),
                    m,
                    "{what}: OCI manifest kept as-is"
                );
            }

            let listed = list_images(&store).unwrap();
            assert_eq!(listed.len(), 1, "{what}");
            assert_eq!(listed[0].name, img.name);
            assert_eq!(listed[0].manifest_digest, img.manifest_digest);
            assert_eq!(listed[0].size_bytes, written.size_bytes, "{what}");
            assert_eq!(listed[0].layers, 2);

            let image = load_image(&store, "kiln/test:1").unwrap();
            assert_eq!(image.manifest_digest, img.manifest_digest);
            assert_eq!(image.config_digest.to_string(), written.config_digest);
            assert_eq!(
                image.config,
                ImageConfig {
                    env: vec![DEFAULT_PATH_ENV.into(), "GREETING=hi".into()],
                    working_dir: Some("/app".into()),
                    user: Some("1000:1000".into()),
                    entrypoint: vec!["/bin/sh".into(), "-c".into()],
                    cmd: vec!["/app/run".into()],
                }
            );
            let digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
            assert_eq!(digests, written.layer_digests, "{what}");
            for layer in &image.layers {
                assert_eq!(layer.media_type, compression.layer_media_type(), "{what}");
            }

            let base = ensure_unpacked(&store, &image.layers[0]).unwrap();
            let top = ensure_unpacked(&store, &image.layers[1]).unwrap();
            assert_eq!(
                std::fs::read(base.join("etc/os-release")).unwrap(),
                b"ID=kiln-test\n"
            );
            assert!(common::is_whiteout(&top.join("etc/motd")), "{what}");
            assert_eq!(base, store.layer_path(image.layers[0].digest.hex()));
            // Second call finds the committed layer.
            assert_eq!(ensure_unpacked(&store, &image.layers[0]).unwrap(), base);

            // Re-import is idempotent: same digest, same tags, no new blobs.
            let blobs = blob_count(&store);
            let again = import(&store, &path, None).unwrap();
            assert_eq!(again, imported, "{what}");
            assert_eq!(blob_count(&store), blobs, "{what}");
            assert_eq!(list_images(&store).unwrap(), listed);
        }
    }
}

#[test]
fn busybox_fixture_image_imports_under_its_normalised_name() {
    let (tmp, store) = temp_store();
    let layout = busybox_image(tmp.path(), Compression::Gzip);
    let imported = import(&store, &layout, None).unwrap();
    assert_eq!(imported[0].name, "docker.io/library/busybox:test");
    for spelling in [
        "busybox:test",
        "docker.io/library/busybox:test",
        "library/busybox:test",
    ] {
        let image = load_image(&store, spelling).unwrap();
        assert_eq!(image.config.env, [DEFAULT_PATH_ENV]);
        assert_eq!(image.config.cmd, ["sh"]);
        assert_eq!(image.layers.len(), 1);
    }
    let image = load_image(&store, "busybox:test").unwrap();
    let root = ensure_unpacked(&store, &image.layers[0]).unwrap();
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    // By digest, too.
    let by_digest = load_image(&store, &format!("busybox@{}", image.manifest_digest)).unwrap();
    assert_eq!(by_digest.manifest_digest, image.manifest_digest);
}

#[test]
fn tag_override_names_the_image() {
    for format in FORMATS {
        let (tmp, store) = temp_store();
        let (path, _) = write(
            format,
            tmp.path(),
            &small_image(Compression::Gzip, Some("orig:1")),
        );
        let imported = import(&store, &path, Some("localhost:5000/mine:dev")).unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].name, "localhost:5000/mine:dev", "{format:?}");
        let names: Vec<_> = list_images(&store)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(
            names,
            ["localhost:5000/mine:dev"],
            "{format:?}: only the given tag"
        );
        load_image(&store, "localhost:5000/mine:dev").unwrap();
    }
}

#[test]
fn unnamed_images_need_a_tag() {
    let (tmp, store) = temp_store();
    let (path, _) = write(
        Format::Layout,
        tmp.path(),
        &small_image(Compression::None, None),
    );
    let err = import(&store, &path, None).unwrap_err();
    assert!(matches!(err, Error::UnnamedImage { .. }), "{err}");
    assert!(err.to_string().contains("pass a tag"), "{err}");
    assert!(list_images(&store).unwrap().is_empty());
    let imported = import(&store, &path, Some("named")).unwrap();
    assert_eq!(imported[0].name, "docker.io/library/named:latest");
}

#[test]
fn several_images_in_one_archive() {
    let images = [
        small_image(Compression::Gzip, Some("one:1")),
        busybox_fixture(Compression::Zstd),
    ];
    let (tmp, store) = temp_store();
    let layout = tmp.path().join("multi");
    write_oci_layout_images(&layout, &images);
    let saved = tmp.path().join("multi.tar");
    write_docker_save_images(&saved, &images);

    for path in [&layout, &saved] {
        // Without a tag, each image gets its own name.
        let mut names: Vec<_> = import(&store, path, None)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["docker.io/library/busybox:test", "docker.io/library/one:1"]
        );

        // A tag that names none of them is ambiguous.
        let err = import(&store, path, Some("other:2")).unwrap_err();
        assert!(matches!(err, Error::AmbiguousImage { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("2 images") && msg.contains("docker.io/library/one:1"),
            "{msg}"
        );

        // A tag naming one of them picks it.
        let picked = import(&store, path, Some("busybox:test")).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].name, "docker.io/library/busybox:test");
    }
}

fn arch_image(arch: &str) -> ImageFixture {
    ImageFixture::new(json!({"Env": [format!("ARCH={arch}")]}), None).layer(
        LayerBuilder::new().file("arch", arch, 0o644).tar(),
        Compression::Gzip,
    )
}

#[test]
fn an_index_resolves_to_the_host_platform() {
    let host = host_oci_arch();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    for style in [IndexStyle::Nested, IndexStyle::Flat] {
        let (tmp, store) = temp_store();
        let written = write_oci_index_layout(
            tmp.path(),
            "multi:1",
            &[
                ("amd64", arch_image("amd64")),
                ("arm64", arch_image("arm64")),
            ],
            style,
        );
        let imported = import(&store, tmp.path(), None).unwrap();
        assert_eq!(imported.len(), 1, "{style:?}");
        let find = |arch: &str| &written.platforms.iter().find(|(a, _)| a == arch).unwrap().1;
        assert_eq!(
            Some(imported[0].manifest_digest.to_string()),
            find(host).manifest_digest,
            "{style:?}: the {host} manifest is stored"
        );
        let image = load_image(&store, "multi:1").unwrap();
        assert_eq!(image.config.env, [format!("ARCH={host}")]);
        // The other platform's blobs were not copied.
        for d in &find(other).layer_digests {
            assert!(!store.has_blob(&d.parse::<Digest>().unwrap()), "{style:?}");
        }
        let root = ensure_unpacked(&store, &image.layers[0]).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("arch")).unwrap(), host);
    }
}

#[test]
fn an_index_without_the_host_platform_is_refused() {
    let (tmp, store) = temp_store();
    write_oci_index_layout(
        tmp.path(),
        "foreign:1",
        &[
            ("s390x", arch_image("s390x")),
            ("riscv64", arch_image("riscv64")),
        ],
        IndexStyle::Nested,
    );
    let err = import(&store, tmp.path(), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoPlatform { .. }), "{msg}");
    assert!(
        msg.contains("linux/s390x")
            && msg.contains("linux/riscv64")
            && msg.contains(host_oci_arch()),
        "{msg}"
    );
    assert!(list_images(&store).unwrap().is_empty());
}

#[test]
fn a_blob_not_matching_its_digest_is_refused_and_not_stored() {
    let (tmp, store) = temp_store();
    let (path, written) = write(
        Format::Layout,
        tmp.path(),
        &small_image(Compression::Gzip, Some("bad:1")),
    );
    let victim = &written.layer_digests[1];
    let blob = path
        .join("blobs/sha256")
        .join(victim.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let err = import(&store, &path, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BlobMismatch { .. }), "{msg}");
    assert!(
        msg.contains(victim.as_str()) && msg.contains("bad:1"),
        "{msg}"
    );
    let actual = Digest::of(&bytes);
    assert!(!store.has_blob(&victim.parse().unwrap()));
    assert!(
        !store.has_blob(&actual),
        "the corrupt bytes are not kept under any name"
    );
    assert!(
        list_images(&store).unwrap().is_empty(),
        "no tag for a damaged image"
    );
}

#[test]
fn a_config_whose_diff_id_does_not_match_its_layer_is_refused() {
    for format in FORMATS {
        let (tmp, store) = temp_store();
        let image = small_image(Compression::Gzip, Some("bad-diff-id:1"));
        let real: Vec<String> = image.layers.iter().map(|(t, _)| sha256_digest(t)).collect();
        let wrong = sha256_digest(b"some other layer");
        let image = image.diff_ids(vec![real[0].clone(), wrong.clone()]);
        let (path, _) = write(format, tmp.path(), &image);
        let err = import(&store, &path, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::DiffIdMismatch { .. }),
            "{format:?}: {msg}"
        );
        assert!(
            msg.contains("layer 1") && msg.contains(&wrong) && msg.contains(&real[1]),
            "{format:?}: names the layer index, expected and actual digest: {msg}"
        );
        assert!(
            store.list_tags().unwrap().is_empty(),
            "{format:?}: nothing tagged"
        );
        assert!(load_image(&store, "bad-diff-id:1").is_err());
    }
}

#[test]
fn a_config_with_more_or_fewer_diff_ids_than_layers_is_refused() {
    for format in FORMATS {
        let image = small_image(Compression::Zstd, Some("bad-count:1"));
        let real: Vec<String> = image.layers.iter().map(|(t, _)| sha256_digest(t)).collect();
        let fewer = vec![real[0].clone()];
        let more = vec![real[0].clone(), real[1].clone(), real[1].clone()];
        for (diff_ids, listed) in [(fewer, 1), (more, 3)] {
            let (tmp, store) = temp_store();
            let (path, _) = write(format, tmp.path(), &image.clone().diff_ids(diff_ids));
            let err = import(&store, &path, None).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::BadImage { .. }), "{format:?}: {msg}");
            assert!(
                msg.contains(&format!("{listed} diff_ids")) && msg.contains("2 layers"),
                "{format:?}: {msg}"
            );
            assert!(store.list_tags().unwrap().is_empty(), "{format:?}");
        }
    }
}

#[test]
fn a_blob_corrupted_in_the_store_is_caught_before_unpacking() {
    let (tmp, store) = temp_store();
    let (path, _) = write(
        Format::Archive,
        tmp.path(),
        &small_image(Compression::Zstd, Some("rot:1")),
    );
    import(&store, &path, None).unwrap();
    let image = load_image(&store, "rot:1").unwrap();
    let layer = &image.layers[0];
    let blob = store.blob_path(&layer.digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();

    let err = ensure_unpacked(&store, layer).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::LayerBlob { .. }), "{msg}");
    assert!(
        msg.contains(&layer.digest.to_string()) && msg.contains("re-import"),
        "{msg}"
    );
    assert!(
        !store.has_blob(&layer.digest),
        "the corrupt blob was removed"
    );
    assert!(!store.has_layer(layer.digest.hex()));

    // Re-importing repairs it.
    import(&store, &path, None).unwrap();
    ensure_unpacked(&store, layer).unwrap();
}

#[test]
fn a_truncated_layer_blob_fails_to_unpack_with_a_clear_error() {
    let (_tmp, store) = temp_store();
    let full = LayerBuilder::new()
        .file("big", vec![3u8; 200_000], 0o644)
        .build(Compression::Gzip);
    let cut = &full[..full.len() / 2];
    let digest = store.put_blob(cut).unwrap();
    let layer = LayerRef {
        digest: digest.clone(),
        size: cut.len() as u64,
        media_type: Compression::Gzip.layer_media_type().into(),
        diff_id: None,
    };
    let err = ensure_unpacked(&store, &layer).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&digest.to_string())
            && msg.contains("truncated or corrupt")
            && msg.contains("gzip"),
        "{msg}"
    );
    assert!(!store.has_layer(digest.hex()), "nothing committed");
}

#[test]
fn missing_images_say_where_kiln_looked() {
    let (_tmp, store) = temp_store();
    let err = load_image(&store, "alpine:3.20").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ImageNotFound { .. }), "{msg}");
    assert!(msg.contains("alpine:3.20"), "{msg}");
    assert!(msg.contains("docker.io/library/alpine:3.20"), "{msg}");
    assert!(msg.contains(store.root().to_str().unwrap()), "{msg}");
    assert!(msg.contains("import"), "{msg}");
    let err = load_image(&store, "Not A Reference").unwrap_err();
    assert!(matches!(err, Error::InvalidReference { .. }), "{err}");
}

#[test]
fn unknown_inputs_are_refused() {
    let (tmp, store) = temp_store();
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let plain_tar = tmp.path().join("plain.tar");
    std::fs::write(
        &plain_tar,
        LayerBuilder::new().file("hello", b"x", 0o644).tar(),
    )
    .unwrap();
    for path in [&junk, &empty_dir, &plain_tar] {
        let err = import(&store, path, None).unwrap_err();
        assert!(
            matches!(err, Error::UnknownFormat { .. }),
            "{}: {err}",
            path.display()
        );
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
    let err = import(&store, &tmp.path().join("nope"), None).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn a_compressed_docker_save_archive_imports() {
    let (tmp, store) = temp_store();
    let (path, written) = write(
        Format::DockerSave,
        tmp.path(),
        &small_image(Compression::None, Some("gz:1")),
    );
    let gz = tmp.path().join("saved.tar.gz");
    std::fs::write(
        &gz,
        kiln_testkit::compress(&std::fs::read(&path).unwrap(), Compression::Gzip),
    )
    .unwrap();
    let imported = import(&store, &gz, None).unwrap();
    assert_eq!(imported[0].size_bytes, written.size_bytes);
    // Same content, same synthesised manifest as the uncompressed archive.
    let plain = import(&store, &path, None).unwrap();
    assert_eq!(plain[0].manifest_digest, imported[0].manifest_digest);
}

fn skopeo() -> Option<&'static str> {
    Path::new("/usr/bin/skopeo")
        .exists()
        .then_some("/usr/bin/skopeo")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run skopeo");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cross-check against an independent implementation: skopeo reads kiln's
/// fixtures and writes archives that kiln imports.
#[test]
fn skopeo_round_trip() {
    let Some(skopeo) = skopeo() else {
        eprintln!("skipped: skopeo not installed");
        return;
    };
    let (tmp, store) = temp_store();
    let layout = busybox_image(tmp.path(), Compression::Gzip);
    let src = format!("oci:{}:busybox:test", layout.display());
    run(Command::new(skopeo).args(["inspect", "--raw", &src]));

    let docker_archive = tmp.path().join("docker.tar");
    run(Command::new(skopeo).args([
        "copy",
        "--quiet",
        &src,
        &format!(
            "docker-archive:{}:example.com/bb:skopeo",
            docker_archive.display()
        ),
    ]));
    let oci_archive = tmp.path().join("oci.tar");
    run(Command::new(skopeo).args([
        "copy",
        "--quiet",
        &src,
        &format!("oci-archive:{}:example.com/bb:oci", oci_archive.display()),
    ]));

    let ours = import(&store, &layout, None).unwrap();
    let from_docker = import(&store, &docker_archive, None).unwrap();
    assert_eq!(from_docker[0].name, "example.com/bb:skopeo");
    let from_oci = import(&store, &oci_archive, None).unwrap();
    assert_eq!(from_oci[0].name, "example.com/bb:oci");

    for name in [
        "busybox:test",
        "example.com/bb:skopeo",
        "example.com/bb:oci",
    ] {
        let image = load_image(&store, name).unwrap();
        assert_eq!(image.config.cmd, ["sh"], "{name}");
        assert_eq!(image.config.env, [DEFAULT_PATH_ENV], "{name}");
        let root = ensure_unpacked(&store, &image.layers[0]).unwrap();
        assert!(root.join("bin/busybox").is_file(), "{name}");
    }
    assert_eq!(list_images(&store).unwrap().len(), 3);
    drop(ours);
}

#[test]
fn a_malformed_recorded_name_needs_a_tag() {
    for format in FORMATS {
        let (tmp, store) = temp_store();
        let (path, _) = write(
            format,
            tmp.path(),
            &small_image(Compression::None, Some("Not/Valid:x")),
        );
        let err = import(&store, &path, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"Not/Valid:x\"") && msg.contains("pass a tag"),
            "{format:?}: {msg}"
        );
        let imported = import(&store, &path, Some("valid:1")).unwrap();
        assert_eq!(imported[0].name, "docker.io/library/valid:1", "{format:?}");
    }
}
