//! Decompression bombs and their relatives: layers and images that unpack
//! to more than the limits allow are refused as soon as they pass them,
//! with an error naming the limit and how to raise it, and nothing of them
//! is committed to the store.
//!
//! Every test passes its limits explicitly, except the one that reads the
//! environment: it is the only test here to look at it.

mod common;

use std::path::{Path, PathBuf};

use common::{temp_store, tree, Scratch};
use kiln_oci::{
    ensure_image_unpacked, ensure_unpacked_with, import_with, load_image, unpack_layer_with, Error,
    LayerRef, Limit, UnpackLimits, UnpackOptions, MAX_ENTRY_HEADER_BYTES,
};
use kiln_store::Store;
use kiln_testkit::{
    compress, write_docker_save, write_oci_layout, Compression, ImageFixture, LayerBuilder,
    DEFAULT_PATH_ENV,
};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn limits(max_layer_bytes: u64, max_image_bytes: u64) -> UnpackLimits {
    UnpackLimits {
        max_layer_bytes,
        max_image_bytes,
        ..UnpackLimits::BUILTIN
    }
}

fn options(limits: UnpackLimits) -> UnpackOptions {
    UnpackOptions {
        limits,
        image_budget: None,
    }
}

/// Bytes of regular files under `root`, as allocated on disk.
fn bytes_on_disk(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    tree(root)
        .iter()
        .map(|p| std::fs::symlink_metadata(root.join(p)).unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Staging directories (`d-*`) left anywhere under the store's tmp.
fn staging_dirs(store: &Store) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![store.root().join("tmp")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                if e.file_name().to_string_lossy().starts_with("d-") {
                    found.push(e.path());
                } else {
                    stack.push(e.path());
                }
            }
        }
    }
    found
}

fn put_layer(store: &Store, bytes: &[u8], compression: Compression) -> LayerRef {
    LayerRef {
        digest: store.put_blob(bytes).unwrap(),
        size: bytes.len() as u64,
        media_type: compression.layer_media_type().into(),
        diff_id: None,
    }
}

fn too_large(err: &Error) -> Limit {
    match err {
        Error::TooLarge { limit, .. } => *limit,
        Error::Layer { source, .. } => too_large(source),
        other => panic!("expected a limit error, got {other:?}: {other}"),
    }
}

/// One file of 64 MiB of zeros: a few kilobytes compressed.
fn zeros_layer() -> LayerBuilder {
    LayerBuilder::new()
        .dir("data", 0o755)
        .file("data/zeros", vec![0u8; 64 << 20], 0o644)
}

#[test]
fn a_compressed_bomb_layer_is_refused_before_it_is_written() {
    for c in [Compression::Zstd, Compression::Gzip] {
        let bomb = zeros_layer().build(c);
        assert!(bomb.len() < 512 << 10, "{c:?}: {} bytes", bomb.len());

        // Straight into a directory: the file's header declares more than
        // the limit, so not a byte of it is written.
        let s = Scratch::new();
        let err = unpack_layer_with(
            bomb.as_slice(),
            &s.dest,
            &options(limits(16 * MIB, 1 << 40)),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert_eq!(too_large(&err), Limit::LayerBytes, "{msg}");
        assert!(
            msg.contains("16 MiB")
                && msg.contains("KILN_MAX_LAYER_BYTES")
                && msg.contains("data/zeros"),
            "names the limit, the entry and how to raise it: {msg}"
        );
        assert_eq!(bytes_on_disk(&s.dest), 0, "{c:?}");
        s.assert_outside_untouched();

        // Through the store: refused, nothing committed, staging removed.
        let (_tmp, store) = temp_store();
        let layer = put_layer(&store, &bomb, c);
        let err =
            ensure_unpacked_with(&store, &layer, &options(limits(16 * MIB, 1 << 40))).unwrap_err();
        let msg = err.to_string();
        assert_eq!(too_large(&err), Limit::LayerBytes, "{msg}");
        assert!(
            msg.contains(&layer.digest.to_string()),
            "names the layer: {msg}"
        );
        assert!(
            !store.has_layer(layer.layer_id()),
            "{c:?}: nothing committed"
        );
        assert_eq!(staging_dirs(&store), Vec::<PathBuf>::new(), "{c:?}");

        // Under a limit it fits, it unpacks.
        let path =
            ensure_unpacked_with(&store, &layer, &options(limits(65 * MIB, 1 << 40))).unwrap();
        assert_eq!(
            std::fs::metadata(path.join("data/zeros")).unwrap().len(),
            64 << 20
        );
    }
}

#[test]
fn many_small_files_stop_at_the_limit_and_never_write_past_it() {
    let mut layer = LayerBuilder::new();
    for i in 0..64 {
        layer = layer.file(format!("f{i:02}"), vec![0u8; MIB as usize], 0o644);
    }
    for c in [Compression::Zstd, Compression::Gzip] {
        let bytes = layer.build(c);
        let (_tmp, store) = temp_store();
        let layer = put_layer(&store, &bytes, c);
        let s = Scratch::new();
        let err = unpack_layer_with(
            bytes.as_slice(),
            &s.dest,
            &options(limits(16 * MIB, 1 << 40)),
        )
        .unwrap_err();
        assert_eq!(too_large(&err), Limit::LayerBytes, "{err}");
        let written = bytes_on_disk(&s.dest);
        assert!(
            (8 * MIB..=16 * MIB).contains(&written),
            "{c:?}: stopped at the limit, having written {written} bytes"
        );

        let err =
            ensure_unpacked_with(&store, &layer, &options(limits(16 * MIB, 1 << 40))).unwrap_err();
        assert_eq!(too_large(&err), Limit::LayerBytes, "{err}");
        assert!(!store.has_layer(layer.layer_id()));
        assert_eq!(staging_dirs(&store), Vec::<PathBuf>::new());
    }
}

#[test]
fn data_after_the_end_of_the_archive_counts_too() {
    let mut tar = LayerBuilder::new().file("a", b"a", 0o644).tar();
    tar.resize(tar.len() + (64 << 20), 0);
    let bytes = compress(&tar, Compression::Zstd);
    let s = Scratch::new();
    let err = unpack_layer_with(
        bytes.as_slice(),
        &s.dest,
        &options(limits(16 * MIB, 1 << 40)),
    )
    .unwrap_err();
    assert_eq!(too_large(&err), Limit::LayerBytes, "{err}");
    assert!(err.to_string().contains("after entry \"a\""), "{err}");
}

#[test]
fn a_header_declaring_a_giant_size_with_a_short_body() {
    // Over the limit: refused from the header alone.
    let giant = LayerBuilder::new()
        .file("giant", b"short body", 0o644)
        .pax("size", "1099511627776");
    let s = Scratch::new();
    let err = unpack_layer_with(
        giant.build(Compression::Gzip).as_slice(),
        &s.dest,
        &options(UnpackLimits::BUILTIN),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(too_large(&err), Limit::LayerBytes, "{msg}");
    assert!(
        msg.contains("giant") && msg.contains("1099511627776"),
        "{msg}"
    );
    assert_eq!(bytes_on_disk(&s.dest), 0);

    // Under it: the body runs out, and the layer is corrupt.
    let short = LayerBuilder::new()
        .file("short", b"short body", 0o644)
        .pax("size", "1048576");
    let s = Scratch::new();
    let err = unpack_layer_with(
        short.build(Compression::Gzip).as_slice(),
        &s.dest,
        &options(UnpackLimits::BUILTIN),
    )
    .unwrap_err();
    assert!(matches!(err, Error::CorruptLayer { .. }), "{err:?}");
    assert!(err.to_string().contains("of 1048576 bytes"), "{err}");
}

#[test]
fn too_many_entries_are_refused() {
    let mut layer = LayerBuilder::new();
    for i in 0..101 {
        layer = layer.file(format!("e{i:03}"), b"", 0o644);
    }
    let entries = |n| UnpackLimits {
        max_layer_entries: n,
        ..UnpackLimits::BUILTIN
    };
    let s = Scratch::new();
    let err = unpack_layer_with(
        layer.build(Compression::Zstd).as_slice(),
        &s.dest,
        &options(entries(100)),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(too_large(&err), Limit::LayerEntries, "{msg}");
    assert!(
        msg.contains("100 entries")
            && msg.contains("KILN_MAX_LAYER_ENTRIES")
            && msg.contains("e100"),
        "{msg}"
    );
    assert_eq!(tree(&s.dest).len(), 100);

    let s = Scratch::new();
    let stats = unpack_layer_with(
        layer.build(Compression::Zstd).as_slice(),
        &s.dest,
        &options(entries(101)),
    )
    .unwrap();
    assert_eq!(stats.entries, 101);
}

#[test]
fn a_giant_pax_header_is_refused_while_it_is_read() {
    // The tar reader holds extension headers in memory: 8 MiB of one.
    let layer = LayerBuilder::new()
        .file("x", b"x", 0o644)
        .pax("comment", vec![b'a'; 8 * MAX_ENTRY_HEADER_BYTES as usize]);
    let s = Scratch::new();
    let err = unpack_layer_with(
        layer.build(Compression::Zstd).as_slice(),
        &s.dest,
        &options(UnpackLimits::BUILTIN),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(too_large(&err), Limit::EntryHeaderBytes, "{msg}");
    assert!(
        msg.contains("1 MiB") && msg.contains("extension headers"),
        "{msg}"
    );

    // Real extension headers (long paths, xattrs) are far below the limit;
    // half of it passes.
    let fine = LayerBuilder::new()
        .file(
            format!("{}/f", vec!["d".repeat(200); 15].join("/")),
            b"x",
            0o644,
        )
        .xattr("user.kiln", b"yes")
        .pax("comment", vec![b'c'; MAX_ENTRY_HEADER_BYTES as usize / 2]);
    let s = Scratch::new();
    unpack_layer_with(
        fine.build(Compression::Zstd).as_slice(),
        &s.dest,
        &options(UnpackLimits::BUILTIN),
    )
    .unwrap();
}

/// A GNU sparse file of `real_size` bytes: all hole but for its last 512
/// bytes, which are all that the tar stores.
fn sparse_tar(real_size: u64) -> Vec<u8> {
    fn octal(field: &mut [u8; 12], v: u64) {
        let s = format!("{v:011o}\0");
        field.copy_from_slice(s.as_bytes());
    }
    let mut h = tar::Header::new_gnu();
    h.set_path("holes").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(512);
    h.set_mtime(0);
    let gnu = h.as_gnu_mut().unwrap();
    octal(&mut gnu.sparse[0].offset, real_size - 512);
    octal(&mut gnu.sparse[0].numbytes, 512);
    octal(&mut gnu.realsize, real_size);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend([b'z'; 512]);
    tar.extend([0u8; 1024]);
    tar
}

#[test]
fn sparse_holes_count_against_the_limit() {
    let s = Scratch::new();
    let err = unpack_layer_with(
        compress(&sparse_tar(64 << 20), Compression::Gzip).as_slice(),
        &s.dest,
        &options(limits(16 * MIB, 1 << 40)),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(too_large(&err), Limit::LayerBytes, "{msg}");
    assert!(msg.contains("holes"), "{msg}");
    assert_eq!(bytes_on_disk(&s.dest), 0);

    let s = Scratch::new();
    let stats = unpack_layer_with(
        compress(&sparse_tar(4 << 20), Compression::Gzip).as_slice(),
        &s.dest,
        &options(limits(16 * MIB, 1 << 40)),
    )
    .unwrap();
    let data = std::fs::read(s.dest.join("holes")).unwrap();
    assert_eq!(data.len(), 4 << 20);
    assert!(data[..data.len() - 512].iter().all(|&b| b == 0));
    assert!(data[data.len() - 512..].iter().all(|&b| b == b'z'));
    assert!(stats.unpacked_bytes >= 4 << 20, "{stats:?}");
}

/// Two layers of 10 MiB each: each under a 16 MiB layer limit, together
/// over a 16 MiB image limit.
fn two_layer_image(name: &str) -> ImageFixture {
    let layer = |n: &str| {
        LayerBuilder::new()
            .file(n, vec![0u8; 10 << 20], 0o644)
            .tar()
    };
    ImageFixture::new(json!({"Env": [DEFAULT_PATH_ENV]}), Some(name))
        .layer(layer("one"), Compression::Zstd)
        .layer(layer("two"), Compression::Gzip)
}

#[test]
fn an_image_over_the_image_limit_is_refused_at_import() {
    let tight = limits(16 * MIB, 16 * MIB);
    for docker in [false, true] {
        let (tmp, store) = temp_store();
        let path = tmp.path().join("image");
        if docker {
            write_docker_save(&path, &two_layer_image("big:1"));
        } else {
            write_oci_layout(&path, &two_layer_image("big:1"));
        }
        let err = import_with(&store, &path, None, &tight).unwrap_err();
        let msg = err.to_string();
        assert_eq!(too_large(&err), Limit::ImageBytes, "{msg}");
        assert!(
            msg.contains("KILN_MAX_IMAGE_BYTES")
                && msg.contains("layer 1")
                && msg.contains("big:1"),
            "{msg}"
        );
        assert!(store.list_tags().unwrap().is_empty(), "nothing tagged");

        // One layer over the layer limit is refused the same way.
        let err = import_with(&store, &path, None, &limits(8 * MIB, 1 << 40)).unwrap_err();
        assert_eq!(too_large(&err), Limit::LayerBytes, "{err}");
        assert!(err.to_string().contains("layer 0"), "{err}");

        import_with(&store, &path, None, &limits(16 * MIB, 32 * MIB)).unwrap();
        assert!(load_image(&store, "big:1").is_ok());
    }
}

#[test]
fn an_image_over_the_image_limit_is_refused_at_unpack() {
    let (tmp, store) = temp_store();
    let path = tmp.path().join("layout");
    write_oci_layout(&path, &two_layer_image("big:2"));
    import_with(&store, &path, None, &UnpackLimits::UNLIMITED).unwrap();
    let image = load_image(&store, "big:2").unwrap();

    let err = ensure_image_unpacked(&store, &image, &limits(16 * MIB, 16 * MIB)).unwrap_err();
    let msg = err.to_string();
    assert_eq!(too_large(&err), Limit::ImageBytes, "{msg}");
    assert!(msg.contains(&image.layers[1].digest.to_string()), "{msg}");
    assert!(
        !store.has_layer(image.layers[1].layer_id()),
        "the layer that passed the limit is not committed"
    );
    assert_eq!(staging_dirs(&store), Vec::<PathBuf>::new());

    let dirs = ensure_image_unpacked(&store, &image, &limits(16 * MIB, 32 * MIB)).unwrap();
    assert_eq!(dirs.len(), 2);
    assert!(dirs[1].join("two").is_file());
}

#[test]
fn a_compressed_archive_that_decompresses_past_the_image_limit_is_refused() {
    let (tmp, store) = temp_store();
    let bomb = tmp.path().join("image.tar.gz");
    std::fs::write(&bomb, compress(&vec![0u8; 64 << 20], Compression::Gzip)).unwrap();
    let err = import_with(&store, &bomb, None, &limits(1 << 40, 16 * MIB)).unwrap_err();
    let msg = err.to_string();
    assert_eq!(too_large(&err), Limit::ImageBytes, "{msg}");
    assert!(
        msg.contains("decompressing") && msg.contains("KILN_MAX_IMAGE_BYTES"),
        "{msg}"
    );
    assert_eq!(staging_dirs(&store), Vec::<PathBuf>::new());
}

#[test]
fn limits_come_from_the_environment() {
    for var in [
        UnpackLimits::MAX_LAYER_BYTES_ENV,
        UnpackLimits::MAX_IMAGE_BYTES_ENV,
        UnpackLimits::MAX_LAYER_ENTRIES_ENV,
    ] {
        std::env::remove_var(var);
    }
    assert_eq!(UnpackLimits::default(), UnpackLimits::BUILTIN);
    assert_eq!(UnpackLimits::BUILTIN.max_layer_bytes, 8 << 30);
    assert_eq!(UnpackLimits::BUILTIN.max_image_bytes, 32 << 30);

    std::env::set_var("KILN_MAX_LAYER_BYTES", "16M");
    std::env::set_var("KILN_MAX_IMAGE_BYTES", "unlimited");
    std::env::set_var("KILN_MAX_LAYER_ENTRIES", "lots");
    let err = UnpackLimits::from_env().unwrap_err();
    assert!(
        err.to_string().contains("KILN_MAX_LAYER_ENTRIES=\"lots\""),
        "{err}"
    );
    assert_eq!(
        UnpackLimits::default(),
        UnpackLimits {
            max_layer_bytes: 16 << 20,
            max_image_bytes: u64::MAX,
            max_layer_entries: UnpackLimits::DEFAULT_MAX_LAYER_ENTRIES,
        },
        "a malformed variable falls back to its built-in value alone"
    );
    std::env::set_var("KILN_MAX_LAYER_ENTRIES", "500");
    assert_eq!(UnpackLimits::from_env().unwrap().max_layer_entries, 500);

    // The defaults are what unpack_layer and ensure_unpacked use.
    let s = Scratch::new();
    let err = kiln_oci::unpack_layer(zeros_layer().build(Compression::Zstd).as_slice(), &s.dest)
        .unwrap_err();
    assert_eq!(too_large(&err), Limit::LayerBytes, "{err}");
    for var in [
        UnpackLimits::MAX_LAYER_BYTES_ENV,
        UnpackLimits::MAX_IMAGE_BYTES_ENV,
        UnpackLimits::MAX_LAYER_ENTRIES_ENV,
    ] {
        std::env::remove_var(var);
    }
}
