//! Layer unpacking: overlayfs format, metadata, replacement rules,
//! corrupt input, and a real overlay mount of the result.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{is_root, is_whiteout, tree, unpack_one, xattr, Scratch};
use kiln_oci::{
    layer_root_is_opaque, unpack_layer, visible_layers, Compression as Detected, Error,
    OPAQUE_XATTR,
};
use kiln_testkit::{typeflag, Compression, LayerBuilder, RawEntry};

fn meta(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn files_dirs_and_links_land_with_their_metadata() {
    let layer = LayerBuilder::new()
        .dir("./", 0o755)
        .dir("./usr/", 0o755)
        .dir("./usr/bin/", 0o755)
        .file("./usr/bin/tool", b"#!/bin/sh\n", 0o4755)
        .owner(1000, 1001)
        .mtime(1_234_567_890)
        .dir("./srv/", 0o2750)
        .owner(33, 33)
        .mtime(1_111_111_111)
        .dir("./tmp/", 0o1777)
        .symlink("./usr/bin/sh", "busybox")
        .mtime(1_222_222_222)
        .symlink("./etc/localtime", "/usr/share/zoneinfo/UTC")
        .symlink("./usr/lib64", "../lib")
        .hardlink("./usr/bin/tool2", "usr/bin/tool")
        .fifo("./run/pipe", 0o620)
        .file("./data", b"payload", 0o640)
        .xattr("user.kiln", b"yes");
    let (s, stats) = unpack_one(&layer);
    let d = &s.dest;

    let tool = meta(&d.join("usr/bin/tool"));
    assert_eq!(
        std::fs::read(d.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(tool.mtime(), 1_234_567_890);
    if is_root() {
        assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
        let srv = meta(&d.join("srv"));
        assert_eq!((srv.uid(), srv.gid()), (33, 33));
    }
    let srv = meta(&d.join("srv"));
    assert_eq!(srv.permissions().mode() & 0o7777, 0o2750, "setgid dir");
    assert_eq!(
        srv.mtime(),
        1_111_111_111,
        "dir mtime applied after its children"
    );
    assert_eq!(
        meta(&d.join("tmp")).permissions().mode() & 0o7777,
        0o1777,
        "sticky"
    );

    assert_eq!(
        std::fs::read_link(d.join("usr/bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        meta(&d.join("usr/bin/sh")).mtime(),
        1_222_222_222,
        "symlink's own mtime"
    );
    assert_eq!(
        std::fs::read_link(d.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC"),
        "absolute symlink targets are kept as-is"
    );
    assert_eq!(
        std::fs::read_link(d.join("usr/lib64")).unwrap(),
        Path::new("../lib")
    );

    let tool2 = meta(&d.join("usr/bin/tool2"));
    assert_eq!(tool2.ino(), tool.ino(), "hardlink shares the inode");
    assert_eq!(tool2.nlink(), 2);

    let pipe = meta(&d.join("run/pipe"));
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.permissions().mode() & 0o7777, 0o620);
    // Implied parents are created as plain 0755 directories.
    assert_eq!(meta(&d.join("run")).permissions().mode() & 0o7777, 0o755);

    assert_eq!(
        xattr(&d.join("data"), "user.kiln").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(meta(&d.join("data")).permissions().mode() & 0o7777, 0o640);

    assert_eq!(stats.files, 2);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 3);
    assert_eq!(stats.fifos, 1);
    assert_eq!(stats.dirs, 4);
    assert_eq!(stats.bytes, 10 + 7);
    s.assert_outside_untouched();
}

#[test]
fn security_capability_is_applied_and_other_namespaces_are_not() {
    if !is_root() {
        eprintln!("skipped: setting security.capability needs root");
        return;
    }
    // VFS_CAP_REVISION_2, effective bit set, CAP_NET_BIND_SERVICE permitted.
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    let layer = LayerBuilder::new()
        .file("ping", b"\x7fELF", 0o755)
        .owner(0, 0)
        .xattr("security.capability", &cap)
        .xattr("trusted.overlay.redirect", b"/etc")
        .xattr("trusted.overlay.opaque", b"y")
        .dir("d", 0o755)
        .xattr("trusted.overlay.opaque", b"y");
    let (s, _) = unpack_one(&layer);
    assert_eq!(
        xattr(&s.dest.join("ping"), "security.capability"),
        Some(cap)
    );
    assert_eq!(
        xattr(&s.dest.join("ping"), "trusted.overlay.redirect"),
        None
    );
    assert_eq!(xattr(&s.dest.join("ping"), "trusted.overlay.opaque"), None);
    assert_eq!(
        xattr(&s.dest.join("d"), OPAQUE_XATTR),
        None,
        "only .wh..wh..opq may make a directory opaque"
    );
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let layer = LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc/motd")
        // A file put down earlier in the same layer is removed by a
        // whiteout for it.
        .file("etc/issue", b"old", 0o644)
        .whiteout("etc/issue")
        .dir("var/cache/apt", 0o755)
        .file("var/cache/apt/pkg", b"x", 0o644)
        .whiteout("var/cache/apt")
        // A whiteout in a directory this layer never listed.
        .whiteout("opt/vendor/thing");
    let (s, stats) = unpack_one(&layer);
    let d = &s.dest;
    for gone in ["etc/motd", "etc/issue", "var/cache/apt", "opt/vendor/thing"] {
        assert!(
            is_whiteout(&d.join(gone)),
            "{gone} should be a 0:0 char device"
        );
    }
    assert_eq!(stats.whiteouts, 4);
    let names = tree(d);
    assert!(
        names.iter().all(|n| !n.contains(".wh.")),
        "whiteout entries must not appear: {names:?}"
    );
    s.assert_outside_untouched();
}

#[test]
fn opaque_marker_sets_the_overlay_xattr() {
    let layer = LayerBuilder::new()
        .dir("app", 0o755)
        .opaque("app")
        .file("app/new", b"new", 0o644)
        // A marker for a directory the layer did not list creates it.
        .opaque("lib/modules");
    let (s, stats) = unpack_one(&layer);
    assert_eq!(
        xattr(&s.dest.join("app"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&s.dest.join("lib/modules"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&s.dest.join("lib"), OPAQUE_XATTR), None);
    assert_eq!(tree(&s.dest), ["app", "app/new", "lib", "lib/modules"]);
    assert_eq!(stats.opaque_dirs, 2);
}

#[test]
fn an_opaque_marker_at_the_layer_root_marks_the_root() {
    // Both spellings: bare, and under "./" as GNU tar writes it.
    for marker in [&b".wh..wh..opq"[..], &b"./.wh..wh..opq"[..]] {
        let layer = LayerBuilder::new()
            .dir("./", 0o755)
            .raw_entry(RawEntry::new(marker, typeflag::REGULAR))
            .file("new", b"new", 0o644);
        let (s, stats) = unpack_one(&layer);
        assert_eq!(
            xattr(&s.dest, OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..]),
            "the layer root carries the opaque mark"
        );
        assert_eq!(stats.opaque_dirs, 1);
        assert_eq!(tree(&s.dest), ["new"], "the marker itself is not unpacked");
        s.assert_outside_untouched();
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    let layer = LayerBuilder::new()
        .file("f", b"first", 0o600)
        .file("f", b"second", 0o644)
        .dir("d", 0o700)
        .file("d/child", b"kept", 0o644)
        .dir("d", 0o755)
        .dir("gone", 0o755)
        .file("gone/child", b"x", 0o644)
        .file("gone", b"now a file", 0o644)
        .file("was-file", b"x", 0o644)
        .dir("was-file", 0o750)
        .symlink("link", "f")
        .file("link", b"not through the link", 0o644)
        .whiteout("back")
        .dir("back", 0o755)
        .file("back/new", b"n", 0o644);
    let (s, _) = unpack_one(&layer);
    let d = &s.dest;
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"second");
    assert_eq!(meta(&d.join("f")).permissions().mode() & 0o777, 0o644);
    assert_eq!(
        std::fs::read(d.join("d/child")).unwrap(),
        b"kept",
        "dir over dir keeps children"
    );
    assert_eq!(
        meta(&d.join("d")).permissions().mode() & 0o777,
        0o755,
        "last dir entry's mode wins"
    );
    assert_eq!(std::fs::read(d.join("gone")).unwrap(), b"now a file");
    assert!(meta(&d.join("was-file")).is_dir());
    assert_eq!(
        meta(&d.join("was-file")).permissions().mode() & 0o777,
        0o750
    );
    assert!(
        meta(&d.join("link")).is_file(),
        "the file replaced the symlink"
    );
    assert_eq!(
        std::fs::read(d.join("f")).unwrap(),
        b"second",
        "not written through the link"
    );
    // Deleted from lower layers, then recreated: opaque, so old contents stay hidden.
    assert!(meta(&d.join("back")).is_dir());
    assert_eq!(
        xattr(&d.join("back"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn a_whiteout_then_a_file_beneath_it_makes_an_opaque_directory() {
    let layer = LayerBuilder::new()
        .whiteout("cfg")
        .file("cfg/new.conf", b"x", 0o644);
    let (s, _) = unpack_one(&layer);
    assert!(meta(&s.dest.join("cfg")).is_dir());
    assert_eq!(
        xattr(&s.dest.join("cfg"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(std::fs::read(s.dest.join("cfg/new.conf")).unwrap(), b"x");
}

#[test]
fn every_compression_unpacks_the_same_tree() {
    let layer = LayerBuilder::new()
        .dir("a", 0o755)
        .file("a/big", vec![7u8; 300_000], 0o644)
        .symlink("a/l", "big");
    let mut trees = Vec::new();
    for c in Compression::ALL {
        let s = Scratch::new();
        let stats = unpack_layer(layer.build(c).as_slice(), &s.dest).unwrap();
        let want = match c {
            Compression::None => Detected::None,
            Compression::Gzip => Detected::Gzip,
            Compression::Zstd => Detected::Zstd,
        };
        assert_eq!(stats.compression, Some(want));
        assert_eq!(std::fs::read(s.dest.join("a/big")).unwrap().len(), 300_000);
        trees.push(tree(&s.dest));
    }
    assert!(trees.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn long_paths_via_pax_are_fine_up_to_the_limit() {
    let deep = format!("{}/f", vec!["d".repeat(200); 10].join("/"));
    let layer = LayerBuilder::new().file(&deep, b"deep", 0o644);
    let (s, _) = unpack_one(&layer);
    assert_eq!(std::fs::read(s.dest.join(&deep)).unwrap(), b"deep");
}

#[test]
fn truncated_gzip_is_reported_as_corrupt() {
    let bytes = LayerBuilder::new()
        .file("a", vec![1u8; 100_000], 0o644)
        .file(
            "b",
            (0..200_000u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<_>>(),
            0o644,
        )
        .build(Compression::Gzip);
    for cut in [bytes.len() / 2, bytes.len() - 4] {
        let s = Scratch::new();
        let err = unpack_layer(&bytes[..cut], &s.dest).unwrap_err();
        assert!(
            matches!(err, Error::CorruptLayer { .. }),
            "cut at {cut}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("truncated or corrupt") && msg.contains("gzip"),
            "{msg}"
        );
    }
}

#[test]
fn truncated_zstd_and_plain_tar_are_reported_as_corrupt() {
    let layer = LayerBuilder::new()
        .file("a", vec![1u8; 100_000], 0o644)
        .file("b", b"x", 0o644);
    let zst = layer.build(Compression::Zstd);
    let s = Scratch::new();
    let err = unpack_layer(&zst[..zst.len() / 2], &s.dest).unwrap_err();
    assert!(matches!(err, Error::CorruptLayer { .. }), "{err:?}");

    let tar = layer.build(Compression::None);
    let s = Scratch::new();
    let err = unpack_layer(&tar[..50_000], &s.dest).unwrap_err();
    assert!(matches!(err, Error::CorruptLayer { .. }), "{err:?}");
    assert!(err.to_string().contains("\"a\""), "names the entry: {err}");
}

#[test]
fn garbage_is_not_a_layer() {
    let s = Scratch::new();
    let err = unpack_layer(&[0x42u8; 2048][..], &s.dest).unwrap_err();
    assert!(matches!(err, Error::CorruptLayer { .. }), "{err:?}");
}

#[test]
fn destination_must_be_empty() {
    let s = Scratch::new();
    std::fs::write(s.dest.join("x"), b"").unwrap();
    let err = s
        .unpack(&LayerBuilder::new().file("a", b"", 0o644))
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// The point of the format: layers stacked by a real overlayfs mount show
/// the merged view, with whiteouts deleting and opaque dirs hiding.
#[test]
fn unpacked_layers_stack_in_a_real_overlay_mount() {
    if !is_root() {
        eprintln!("skipped: mounting overlayfs needs root");
        return;
    }
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", b"welcome", 0o644)
        .file("etc/keep", b"base", 0o644)
        .dir("app", 0o755)
        .file("app/old1", b"1", 0o644)
        .file("app/old2", b"2", 0o644)
        .dir("lib", 0o755)
        .file("lib/a.so", b"a", 0o644);
    let middle = LayerBuilder::new()
        .whiteout("etc/motd")
        .opaque("app")
        .file("app/new", b"new", 0o644)
        .file("lib/b.so", b"b", 0o644);
    let top = LayerBuilder::new()
        .file("etc/keep", b"top", 0o644)
        .whiteout("lib/a.so")
        .whiteout("etc/never-existed");

    let work = tempfile::tempdir().unwrap();
    let mut lowers = Vec::new();
    for (i, layer) in [&base, &middle, &top].into_iter().enumerate() {
        let dir = work.path().join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap();
        unpack_layer(layer.build(Compression::Gzip).as_slice(), &dir).unwrap();
        lowers.push(dir);
    }
    let merged = work.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    // lowerdir lists the topmost layer first.
    let lowerdir = lowers
        .iter()
        .rev()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        format!("lowerdir={lowerdir}").as_str(),
    )
    .expect("mount overlayfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _guard = Unmount(&merged);

    assert_eq!(
        tree(&merged),
        ["app", "app/new", "etc", "etc/keep", "lib", "lib/b.so"],
        "merged view"
    );
    assert_eq!(std::fs::read(merged.join("etc/keep")).unwrap(), b"top");
    assert!(
        !merged.join("etc/motd").exists(),
        "whiteout deletes a lower file"
    );
    assert!(
        !merged.join("app/old1").exists(),
        "opaque dir hides lower contents"
    );
}

/// An opaque marker at a layer's root hides every lower layer (OCI image
/// spec, "Opaque Whiteout"). Overlayfs ignores the opaque mark on a layer
/// root, so the stack is cut with `visible_layers` before mounting.
#[test]
fn a_root_opaque_layer_hides_every_lower_layer_in_a_real_overlay_mount() {
    if !is_root() {
        eprintln!("skipped: mounting overlayfs needs root");
        return;
    }
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", b"welcome", 0o644)
        .file("old", b"old", 0o644);
    let middle = LayerBuilder::new().file("etc/extra", b"x", 0o644);
    let reset = LayerBuilder::new().opaque("").file("new", b"new", 0o644);
    let top = LayerBuilder::new().file("etc/later", b"later", 0o644);

    let work = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (i, layer) in [&base, &middle, &reset, &top].into_iter().enumerate() {
        let dir = work.path().join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap();
        unpack_layer(layer.build(Compression::Zstd).as_slice(), &dir).unwrap();
        dirs.push(dir);
    }
    assert!(layer_root_is_opaque(&dirs[2]));
    assert!(!layer_root_is_opaque(&dirs[0]) && !layer_root_is_opaque(&dirs[3]));
    assert_eq!(
        visible_layers(&dirs[..2]),
        &dirs[..2],
        "no opaque root: all"
    );
    assert_eq!(visible_layers(&dirs), &dirs[2..], "from the opaque root up");

    let mount = |layers: &[PathBuf], name: &str| {
        let merged = work.path().join(name);
        std::fs::create_dir(&merged).unwrap();
        let lowerdir = layers
            .iter()
            .rev()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(":");
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            rustix::mount::MountFlags::RDONLY,
            format!("lowerdir={lowerdir}").as_str(),
        )
        .expect("mount overlayfs");
        merged
    };
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let merged = Unmount(mount(visible_layers(&dirs), "merged"));
    assert_eq!(
        tree(&merged.0),
        ["etc", "etc/later", "new"],
        "only the opaque layer and those above it are visible"
    );
    assert_eq!(std::fs::read(merged.0.join("new")).unwrap(), b"new");
}
