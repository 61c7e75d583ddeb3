//! Export: deterministic layer packing, image building over a base image,
//! and saving to a tar that is both an OCI archive and a `docker save`
//! tarball, checked by reading everything back with the tar crate, kiln's
//! own importer and unpacker, and skopeo.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{is_root, is_whiteout, temp_store, xattr};
use kiln_oci::{
    ensure_unpacked, host_platform, import, load_image, pack_layer, save, unpack_layer,
    write_image, BaseImage, BuiltImage, Error, Image, ImageConfig, ImageSpec, LayerRef,
    PackOptions, PackedLayer, LAYER_MEDIA_TYPE_GZIP, OPAQUE_XATTR,
};
use kiln_store::{Digest, Store};
use kiln_testkit::{busybox_image, privileged, Compression, DEFAULT_PATH_ENV};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};
use serde_json::{json, Value};

// ---- helpers -------------------------------------------------------------------

/// Builds a layer directory in the store's staging area and commits it as
/// layer `id`, the way the engine commits a step's upper directory.
fn make_layer(store: &Store, id: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let staged = store.stage_dir().unwrap();
    build(staged.path());
    store.commit_layer(staged, id).unwrap()
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
    chmod(path, mode);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    chmod(path, mode);
}

fn set_times(path: &Path, atime: i64, mtime: i64) {
    let ts = |s| Timespec {
        tv_sec: s,
        tv_nsec: 123,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Sets every atime and mtime under `root` (deepest first, so directory
/// times stick), from `seed`, all different.
fn scramble_times(root: &Path, seed: i64) {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            paths.push(e.path());
        }
    }
    paths.sort();
    for (i, p) in paths.iter().enumerate().rev() {
        set_times(p, seed + 7 * i as i64, seed + 13 * i as i64);
    }
}

fn make_whiteout(path: &Path) {
    rustix::fs::mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("set {name} on {}: {e}", path.display()));
}

fn blob(store: &Store, digest: &Digest) -> Vec<u8> {
    store.read_blob(digest).unwrap()
}

fn blob_json(store: &Store, digest: &Digest) -> Value {
    serde_json::from_slice(&blob(store, digest)).unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// One tar member as read back (long names merged in by the tar crate).
#[derive(Debug)]
struct Member {
    path: String,
    kind: tar::EntryType,
    link: Option<String>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    pax: Vec<(String, Vec<u8>)>,
    header: tar::Header,
}

fn members(tar_bytes: &[u8]) -> Vec<Member> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let pax = match entry.pax_extensions().unwrap() {
            Some(records) => records
                .map(|r| {
                    let r = r.unwrap();
                    (r.key().unwrap().to_owned(), r.value_bytes().to_vec())
                })
                .collect(),
            None => Vec::new(),
        };
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(Member {
            path: String::from_utf8(entry.path_bytes().to_vec()).unwrap(),
            kind: header.entry_type(),
            link: entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.to_vec()).unwrap()),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime: header.mtime().unwrap(),
            data,
            pax,
            header,
        });
    }
    out
}

fn layer_members(store: &Store, packed: &PackedLayer) -> Vec<Member> {
    members(&gunzip(&blob(store, &packed.digest)))
}

fn paths(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.path.as_str()).collect()
}

/// Whether skopeo can be used; skips with a message unless
/// `KILN_REQUIRE_REGISTRY` is set, when a missing skopeo fails the test.
fn skopeo_available() -> bool {
    let ok = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("KILN_REQUIRE_REGISTRY").is_some() {
            panic!("skopeo is required (KILN_REQUIRE_REGISTRY is set) but not installed: apt-get install skopeo");
        }
        eprintln!("skipping the skopeo checks: skopeo is not installed (apt-get install skopeo)");
    }
    ok
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---- the same content, two stores -----------------------------------------------

/// A layer with nested directories, odd sort cases (`a`, `a-b`, `a.txt`,
/// `a0`), special mode bits, a hardlink within the layer, symlinks, a fifo
/// and a name longer than a tar header holds. `reverse` creates everything
/// in the opposite order, after creating and deleting scratch files so the
/// inode numbers differ too.
fn build_sample(root: &Path, reverse: bool, outside_object: Option<&Path>) {
    let long_file = format!("deep/{}/{}", "d".repeat(60), "f".repeat(80));
    let long_target = format!("../{}/{}", "t".repeat(90), "u".repeat(40));
    type Step = Box<dyn Fn(&Path)>;
    let tool_steps: Vec<Step> = vec![
        Box::new(|r| write_file(&r.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n", 0o4755)),
        Box::new(|r| {
            std::fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool-again")).unwrap()
        }),
    ];
    let mut steps: Vec<Step> = vec![
        Box::new(move |r| {
            mkdir(&r.join("usr/bin"), 0o755);
            if reverse {
                std::os::unix::fs::symlink("tool", r.join("usr/bin/sh")).unwrap();
            }
            for step in &tool_steps {
                step(r);
            }
            if !reverse {
                std::os::unix::fs::symlink("tool", r.join("usr/bin/sh")).unwrap();
            }
        }),
        Box::new(|r| {
            std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", r.join("localtime")).unwrap()
        }),
        Box::new(|r| mkdir(&r.join("tmp"), 0o1777)),
        Box::new(|r| mkdir(&r.join("srv"), 0o2750)),
        Box::new(|r| mkdir(&r.join("empty"), 0o700)),
        Box::new(|r| write_file(&r.join("a/x"), b"x", 0o644)),
        Box::new(|r| write_file(&r.join("a-b"), b"a-b", 0o600)),
        Box::new(|r| write_file(&r.join("a.txt"), b"a.txt", 0o644)),
        Box::new(|r| write_file(&r.join("a0"), b"", 0o644)),
        Box::new(|r| {
            rustix::fs::mknodat(
                CWD,
                r.join("run-pipe"),
                FileType::Fifo,
                Mode::from_raw_mode(0o620),
                0,
            )
            .unwrap();
            chmod(&r.join("run-pipe"), 0o620);
        }),
        Box::new(move |r| write_file(&r.join(&long_file), b"long", 0o644)),
        Box::new(move |r| {
            std::fs::create_dir_all(r.join("deep")).unwrap();
            std::os::unix::fs::symlink(&long_target, r.join("deep/long-link")).unwrap()
        }),
    ];
    if reverse {
        steps.reverse();
        for i in 0..50 {
            std::fs::write(root.join(format!("scratch{i}")), b"").unwrap();
        }
        for i in 0..50 {
            std::fs::remove_file(root.join(format!("scratch{i}"))).unwrap();
        }
    }
    for step in &steps {
        step(root);
    }
    // Directories were created as parents by whichever step came first.
    for (dir, mode) in [("usr", 0o755), ("a", 0o755), ("deep", 0o755)] {
        chmod(&root.join(dir), mode);
    }
    match outside_object {
        // A file linked to a content object outside the layer, as host
        // directory layers are: nlink is 2, but within the layer it is one
        // file.
        Some(object) => {
            std::fs::write(object, b"shared content\n").unwrap();
            chmod(object, 0o644);
            std::fs::hard_link(object, root.join("etc-config")).unwrap();
        }
        None => write_file(&root.join("etc-config"), b"shared content\n", 0o644),
    }
    if is_root() {
        std::os::unix::fs::lchown(root.join("srv"), Some(33), Some(33)).unwrap();
        chmod(&root.join("srv"), 0o2750);
        std::os::unix::fs::lchown(root.join("a-b"), Some(1000), Some(1001)).unwrap();
    }
}

#[test]
fn same_content_packs_to_the_same_digest_in_two_stores() {
    let (dir_a, store_a) = temp_store();
    let (_dir_b, store_b) = temp_store();
    let id = "0".repeat(64);
    let layer_a = make_layer(&store_a, &id, |r| build_sample(r, false, None));
    let object = dir_a.path().join("object");
    let layer_b = make_layer(&store_b, &id, |r| build_sample(r, true, Some(&object)));
    scramble_times(&layer_a, 1_000);
    scramble_times(&layer_b, 1_600_000_000);
    assert_ne!(
        std::fs::metadata(layer_a.join("usr/bin/tool"))
            .unwrap()
            .ino(),
        std::fs::metadata(layer_b.join("usr/bin/tool"))
            .unwrap()
            .ino(),
        "the two layers should differ in inode numbers"
    );

    let epoch = PackOptions { mtime: 0 };
    let a = pack_layer(&store_a, &id, &epoch).unwrap();
    let b = pack_layer(&store_b, &id, &epoch).unwrap();
    assert_eq!(a, b, "same content, same digest and diff_id");
    assert_eq!(a.media_type, LAYER_MEDIA_TYPE_GZIP);
    assert_eq!(store_a.blob_size(&a.digest), Some(a.size));
    assert_eq!(Digest::of(&gunzip(&blob(&store_a, &a.digest))), a.diff_id);
    assert_eq!(
        blob(&store_a, &a.digest),
        blob(&store_b, &b.digest),
        "byte for byte"
    );

    let later = PackOptions {
        mtime: 1_700_000_000,
    };
    let a_later = pack_layer(&store_a, &id, &later).unwrap();
    assert_ne!(a_later.digest, a.digest, "the mtime option is in the bytes");
    assert_ne!(a_later.diff_id, a.diff_id);
    assert_eq!(a_later, pack_layer(&store_b, &id, &later).unwrap());

    // The hardlink inside the layer is a link entry; the file linked to an
    // object outside the layer is whole.
    let listed = layer_members(&store_b, &b);
    let again = listed
        .iter()
        .find(|m| m.path == "usr/bin/tool-again")
        .unwrap();
    assert_eq!(again.kind, tar::EntryType::Link);
    assert_eq!(again.link.as_deref(), Some("usr/bin/tool"));
    let config = listed.iter().find(|m| m.path == "etc-config").unwrap();
    assert_eq!(config.kind, tar::EntryType::Regular);
    assert_eq!(config.data, b"shared content\n");
}

#[test]
fn packing_is_memoized_because_layers_are_immutable() {
    let (_dir, store) = temp_store();
    let id = "1".repeat(64);
    let layer = make_layer(&store, &id, |r| write_file(&r.join("one"), b"1", 0o644));
    let options = PackOptions { mtime: 0 };
    let first = pack_layer(&store, &id, &options).unwrap();

    // Layers never change in kiln; changing this one behind the store's
    // back shows that the second call does not read it again.
    write_file(&layer.join("two"), b"2", 0o644);
    let second = pack_layer(&store, &id, &options).unwrap();
    assert_eq!(second, first, "served from the record, not the directory");

    // A record whose blob was pruned is no record: the layer is packed
    // again, and now the extra file is in it.
    std::fs::remove_file(store.blob_path(&first.digest)).unwrap();
    let third = pack_layer(&store, &id, &options).unwrap();
    assert_ne!(third.digest, first.digest);
    assert!(store.has_blob(&third.digest));
    assert_eq!(paths(&layer_members(&store, &third)), ["one", "two"]);
}

// ---- the tar itself ---------------------------------------------------------------

#[test]
fn every_header_is_normalised_and_paths_are_sorted() {
    let (_dir, store) = temp_store();
    let id = "2".repeat(64);
    let layer = make_layer(&store, &id, |r| build_sample(r, false, None));
    scramble_times(&layer, 1_234_567);
    let mtime = 1_700_000_000;
    let packed = pack_layer(&store, &id, &PackOptions { mtime }).unwrap();

    let gz = blob(&store, &packed.digest);
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "gzip, deflate");
    assert_eq!(gz[3], 0, "no file name or other optional gzip fields");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip mtime 0");
    assert_eq!(gz[9], 255, "gzip OS unknown");

    let listed = members(&gunzip(&gz));
    assert!(!listed.is_empty());
    for m in &listed {
        assert_eq!(m.mtime, mtime, "{}", m.path);
        assert_eq!(m.header.username_bytes(), Some(&b""[..]), "{}", m.path);
        assert_eq!(m.header.groupname_bytes(), Some(&b""[..]), "{}", m.path);
        let gnu = m.header.as_gnu().expect("GNU header");
        assert_eq!(gnu.atime, [0; 12], "no atime: {}", m.path);
        assert_eq!(gnu.ctime, [0; 12], "no ctime: {}", m.path);
        assert_eq!(gnu.dev_major, [0; 8], "no device number: {}", m.path);
        assert_eq!(gnu.dev_minor, [0; 8], "no device number: {}", m.path);
        assert!(
            !m.path.starts_with("./") && !m.path.starts_with('/'),
            "{}",
            m.path
        );
        assert_eq!(
            m.path.ends_with('/'),
            m.kind == tar::EntryType::Directory,
            "directories and only they end in '/': {}",
            m.path
        );
        if !is_root() {
            assert_eq!((m.uid, m.gid), (0, 0), "{}", m.path);
        }
    }
    for pair in listed.windows(2) {
        assert!(
            pair[0].path.as_bytes() < pair[1].path.as_bytes(),
            "not in byte order: {:?} then {:?}",
            pair[0].path,
            pair[1].path
        );
    }
    assert_eq!(
        paths(&listed)[..6],
        ["a-b", "a.txt", "a/", "a/x", "a0", "deep/"],
        "byte order of whole paths"
    );

    let by_path = |p: &str| {
        listed
            .iter()
            .find(|m| m.path == p)
            .unwrap_or_else(|| panic!("{p} not in {:?}", paths(&listed)))
    };
    assert_eq!(by_path("usr/bin/tool").mode, 0o4755, "setuid kept");
    assert_eq!(by_path("tmp/").mode, 0o1777, "sticky kept");
    assert_eq!(by_path("srv/").mode, 0o2750, "setgid kept");
    assert_eq!(by_path("empty/").mode, 0o700);
    assert_eq!(by_path("usr/bin/tool").data, b"#!/bin/sh\necho tool\n");
    let sh = by_path("usr/bin/sh");
    assert_eq!(sh.kind, tar::EntryType::Symlink);
    assert_eq!(sh.link.as_deref(), Some("tool"));
    assert_eq!(sh.mode, 0o777);
    assert_eq!(by_path("run-pipe").kind, tar::EntryType::Fifo);
    assert_eq!(by_path("run-pipe").mode, 0o620);
    if is_root() {
        let ab = by_path("a-b");
        assert_eq!(
            (ab.uid, ab.gid),
            (1000, 1001),
            "numeric owners kept as root"
        );
        assert_eq!((by_path("srv/").uid, by_path("srv/").gid), (33, 33));
    }
    // Long names and long link targets survive whole.
    let long = format!("deep/{}/{}", "d".repeat(60), "f".repeat(80));
    assert_eq!(by_path(&long).data, b"long");
    assert_eq!(
        by_path("deep/long-link").link.as_deref(),
        Some(format!("../{}/{}", "t".repeat(90), "u".repeat(40)).as_str())
    );
}

#[test]
fn only_the_capability_xattr_is_packed() {
    if !privileged() {
        return;
    }
    let (_dir, store) = temp_store();
    let id = "3".repeat(64);
    // A v2 file capability: effective, cap_net_bind_service permitted.
    let caps: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    make_layer(&store, &id, |r| {
        write_file(&r.join("ping"), b"binary", 0o755);
        set_xattr(&r.join("ping"), "security.capability", &caps);
        set_xattr(&r.join("ping"), "trusted.kiln.test", b"host secret");
        set_xattr(&r.join("ping"), "user.kiln", b"incidental");
        mkdir(&r.join("d"), 0o755);
        set_xattr(&r.join("d"), "trusted.overlay.redirect", b"/elsewhere");
    });
    let packed = pack_layer(&store, &id, &PackOptions::default()).unwrap();
    let listed = layer_members(&store, &packed);
    let ping = listed.iter().find(|m| m.path == "ping").unwrap();
    let stored = xattr(&store.layer_path(&id).join("ping"), "security.capability").unwrap();
    let xattrs: Vec<_> = ping
        .pax
        .iter()
        .filter(|(k, _)| k.starts_with("SCHILY.xattr."))
        .collect();
    assert_eq!(
        xattrs,
        [&(
            "SCHILY.xattr.security.capability".to_owned(),
            stored.clone()
        )]
    );
    let dir = listed.iter().find(|m| m.path == "d/").unwrap();
    assert!(dir.pax.is_empty(), "no overlay xattrs: {:?}", dir.pax);

    // And it comes back on unpack.
    let dest = tempfile::tempdir().unwrap();
    unpack_layer(
        std::fs::File::open(store.blob_path(&packed.digest)).unwrap(),
        dest.path(),
    )
    .unwrap();
    assert_eq!(
        xattr(&dest.path().join("ping"), "security.capability"),
        Some(stored)
    );
    assert_eq!(xattr(&dest.path().join("ping"), "trusted.kiln.test"), None);
    assert_eq!(xattr(&dest.path().join("ping"), "user.kiln"), None);
}

// ---- overlay format round trip -------------------------------------------------------

/// Everything about one path that the round trip must keep.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    content: Vec<u8>,
    opaque: bool,
}

fn snapshot(root: &Path) -> Vec<(String, Node)> {
    let mut out = Vec::new();
    for path in kiln_testkit::files_under(root)
        .into_iter()
        .chain(all_non_files(root))
    {
        out.push(path);
    }
    let mut nodes: Vec<(String, Node)> = out
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let ft = meta.file_type();
            let (kind, content) = if is_whiteout(&p) {
                ("whiteout", Vec::new())
            } else if ft.is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if ft.is_dir() {
                ("dir", Vec::new())
            } else if ft.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("file", std::fs::read(&p).unwrap())
            };
            let mode = match kind {
                "symlink" | "whiteout" => 0,
                _ => meta.mode() & 0o7777,
            };
            let owner = match kind {
                "whiteout" => (0, 0),
                _ => (meta.uid(), meta.gid()),
            };
            let node = Node {
                kind,
                mode,
                owner,
                content,
                opaque: kind == "dir" && xattr(&p, OPAQUE_XATTR).as_deref() == Some(b"y"),
            };
            (
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                node,
            )
        })
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    nodes
}

/// Directories, symlinks, fifos and device nodes under `root`.
fn all_non_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            }
            if !ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn whiteouts_opaque_dirs_and_links_round_trip_through_unpack() {
    if !privileged() {
        return;
    }
    let (_dir, store) = temp_store();
    let id = "4".repeat(64);
    let layer = make_layer(&store, &id, |r| {
        mkdir(&r.join("etc"), 0o755);
        make_whiteout(&r.join("etc/motd"));
        write_file(&r.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n", 0o644);
        mkdir(&r.join("usr/bin"), 0o755);
        write_file(&r.join("usr/bin/tool"), b"tool", 0o755);
        std::os::unix::fs::lchown(r.join("usr/bin/tool"), Some(1000), Some(1000)).unwrap();
        chmod(&r.join("usr/bin/tool"), 0o4755);
        std::fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool-again")).unwrap();
        std::os::unix::fs::symlink("tool", r.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("../lib", r.join("usr/lib64")).unwrap();
        mkdir(&r.join("var/cache"), 0o755);
        set_xattr(&r.join("var/cache"), OPAQUE_XATTR, b"y");
        write_file(&r.join("var/cache/fresh"), b"new", 0o600);
        make_whiteout(&r.join("var/cache/gone"));
        // `x` marks a directory holding whiteouts, not an opaque one.
        mkdir(&r.join("var/log"), 0o755);
        set_xattr(&r.join("var/log"), OPAQUE_XATTR, b"x");
        make_whiteout(&r.join("var/log/old"));
        mkdir(&r.join("tmp"), 0o1777);
        mkdir(&r.join("srv"), 0o755);
        std::os::unix::fs::lchown(r.join("srv"), Some(33), Some(33)).unwrap();
        chmod(&r.join("srv"), 0o2750);
        rustix::fs::mknodat(
            CWD,
            r.join("srv/pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o620),
            0,
        )
        .unwrap();
        chmod(&r.join("srv/pipe"), 0o620);
    });
    let mtime = 1_234_567_890;
    let packed = pack_layer(&store, &id, &PackOptions { mtime }).unwrap();

    let listed = layer_members(&store, &packed);
    let names = paths(&listed);
    let at = |p: &str| {
        names
            .iter()
            .position(|n| *n == p)
            .unwrap_or_else(|| panic!("{p} not in {names:?}"))
    };
    assert_eq!(listed[at("etc/.wh.motd")].kind, tar::EntryType::Regular);
    assert!(listed[at("etc/.wh.motd")].data.is_empty());
    assert_eq!(
        names[at("var/cache/") + 1],
        "var/cache/.wh..wh..opq",
        "the opaque marker follows its directory"
    );
    assert!(names.contains(&"var/cache/.wh.gone"));
    assert!(names.contains(&"var/log/.wh.old"));
    assert!(
        !names.contains(&"var/log/.wh..wh..opq"),
        "opaque=x is not opaque"
    );
    // Apart from the opaque marker, paths are in byte order.
    let ordered: Vec<_> = names
        .iter()
        .filter(|n| !n.ends_with("/.wh..wh..opq"))
        .collect();
    assert!(ordered.windows(2).all(|w| w[0] < w[1]), "{names:?}");

    let dest = tempfile::tempdir().unwrap();
    let stats = unpack_layer(
        std::fs::File::open(store.blob_path(&packed.digest)).unwrap(),
        dest.path(),
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(stats.opaque_dirs, 1);
    assert_eq!(stats.hardlinks, 1);

    let mut original = snapshot(&layer);
    // overlayfs's `x` mark is bookkeeping of the host's kernel; it is
    // rightly not carried, and the unpacked dir has no mark.
    for (path, node) in &mut original {
        if path == "var/log" {
            assert!(!node.opaque);
        }
    }
    assert_eq!(snapshot(dest.path()), original);
    let unpacked = |p: &str| std::fs::symlink_metadata(dest.path().join(p)).unwrap();
    assert_eq!(
        unpacked("usr/bin/tool").ino(),
        unpacked("usr/bin/tool-again").ino(),
        "the hardlink within the layer is a hardlink again"
    );
    for p in [
        "etc/passwd",
        "usr/bin/tool",
        "usr/bin/sh",
        "var/cache",
        "srv",
    ] {
        assert_eq!(unpacked(p).mtime(), mtime as i64, "{p}");
    }
}

#[test]
fn an_opaque_layer_root_round_trips_through_pack_and_unpack() {
    if !is_root() {
        eprintln!("skipped: trusted.* xattrs need root");
        return;
    }
    let (_dir, store) = temp_store();
    let id = "5".repeat(64);
    let layer = make_layer(&store, &id, |r| {
        set_xattr(r, OPAQUE_XATTR, b"y");
        write_file(&r.join("new"), b"new", 0o644);
        mkdir(&r.join("etc"), 0o755);
    });
    assert_eq!(xattr(&layer, OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
    let packed = pack_layer(&store, &id, &PackOptions { mtime: 0 }).unwrap();
    let listed = layer_members(&store, &packed);
    assert_eq!(
        paths(&listed),
        [".wh..wh..opq", "etc/", "new"],
        "the root's opaque marker comes first"
    );

    let dest = tempfile::tempdir().unwrap();
    let stats = unpack_layer(
        std::fs::File::open(store.blob_path(&packed.digest)).unwrap(),
        dest.path(),
    )
    .unwrap();
    assert_eq!(stats.opaque_dirs, 1);
    assert_eq!(stats.diff_id.as_ref(), Some(&packed.diff_id));
    assert_eq!(xattr(dest.path(), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
}

#[test]
fn refusals_and_skips_name_the_path() {
    let (_dir, store) = temp_store();

    let id = "5".repeat(64);
    make_layer(&store, &id, |r| {
        write_file(&r.join("dir/.wh.sneaky"), b"not a whiteout", 0o644)
    });
    let err = pack_layer(&store, &id, &PackOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::PackRefused { layer, path, .. } if layer == &id && path == "dir/.wh.sneaky"),
        "{err}"
    );
    assert!(err.to_string().contains(".wh."), "{err}");

    // A socket cannot be in a tar; it is left out, the rest is packed.
    let id = "6".repeat(64);
    let layer = make_layer(&store, &id, |r| write_file(&r.join("keep"), b"k", 0o644));
    let _listener = std::os::unix::net::UnixListener::bind(layer.join("sock")).unwrap();
    let packed = pack_layer(&store, &id, &PackOptions::default()).unwrap();
    assert_eq!(paths(&layer_members(&store, &packed)), ["keep"]);

    let err = pack_layer(&store, &"7".repeat(64), &PackOptions::default()).unwrap_err();
    assert!(matches!(err, Error::LayerNotFound { .. }), "{err}");
    assert!(err.to_string().contains(&"7".repeat(64)), "{err}");

    let err = pack_layer(&store, "../../etc", &PackOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidLayerId { .. }), "{err}");

    if privileged() {
        let id = "8".repeat(64);
        make_layer(&store, &id, |r| {
            mkdir(&r.join("dev"), 0o755);
            rustix::fs::mknodat(
                CWD,
                r.join("dev/null"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            )
            .unwrap();
        });
        let err = pack_layer(&store, &id, &PackOptions::default()).unwrap_err();
        assert!(
            matches!(&err, Error::PackRefused { path, .. } if path == "dev/null"),
            "{err}"
        );
        assert!(err.to_string().contains("device"), "{err}");
    }
}

// ---- images ----------------------------------------------------------------------------

/// A store with the busybox fixture imported as busybox:test.
fn store_with_busybox() -> (tempfile::TempDir, Store, Image) {
    let (dir, store) = temp_store();
    let layout = busybox_image(dir.path(), Compression::Gzip);
    import(&store, &layout, None).unwrap();
    let base = load_image(&store, "busybox:test").unwrap();
    (dir, store, base)
}

fn app_layer(store: &Store) -> PackedLayer {
    let id = "a".repeat(64);
    if !store.has_layer(&id) {
        make_layer(store, &id, |r| {
            write_file(
                &r.join("app/run"),
                b"#!/bin/sh\necho hello from app\n",
                0o755,
            )
        });
    }
    pack_layer(store, &id, &PackOptions { mtime: 0 }).unwrap()
}

fn app_config() -> ImageConfig {
    ImageConfig {
        env: vec![DEFAULT_PATH_ENV.to_owned(), "APP=1".to_owned()],
        working_dir: Some("/app".to_owned()),
        user: Some("1000:1000".to_owned()),
        entrypoint: vec!["/bin/sh".to_owned(), "-c".to_owned()],
        cmd: vec!["/app/run".to_owned()],
    }
}

fn app_spec(base: &Image, layer: &PackedLayer, created: u64) -> ImageSpec {
    ImageSpec {
        base: Some(BaseImage::from(base)),
        layers: vec![layer.clone()],
        config: app_config(),
        created,
    }
}

fn build_app(store: &Store, base: &Image) -> (PackedLayer, BuiltImage) {
    let layer = app_layer(store);
    let built = write_image(store, &app_spec(base, &layer, 1_700_000_000)).unwrap();
    (layer, built)
}

#[test]
fn write_image_over_a_base_image() {
    let (_dir, store, base) = store_with_busybox();
    let (layer, built) = build_app(&store, &base);

    let base_config = blob_json(&store, &base.config_digest);
    let mut diff_ids: Vec<Value> = base_config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(diff_ids.len(), 1);
    diff_ids.push(json!(layer.diff_id.to_string()));

    let config = blob_json(&store, &built.config);
    let (os, arch) = host_platform();
    assert_eq!(
        config,
        json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": arch,
            "os": os,
            "config": {
                "User": "1000:1000",
                "Env": [DEFAULT_PATH_ENV, "APP=1"],
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["/app/run"],
                "WorkingDir": "/app",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created_by": "kiln-testkit"},
                {"created": "2023-11-14T22:13:20Z", "created_by": "kiln"},
            ],
        })
    );

    let manifest = blob_json(&store, &built.manifest);
    let base_layer = &base.layers[0];
    assert_eq!(
        manifest,
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": built.config.to_string(),
                "size": store.blob_size(&built.config).unwrap(),
            },
            "layers": [
                {"mediaType": base_layer.media_type, "digest": base_layer.digest.to_string(), "size": base_layer.size},
                {"mediaType": LAYER_MEDIA_TYPE_GZIP, "digest": layer.digest.to_string(), "size": layer.size},
            ],
        })
    );
    assert_eq!(
        built.blobs,
        [
            built.manifest.clone(),
            built.config.clone(),
            base_layer.digest.clone(),
            layer.digest.clone()
        ]
    );

    // Deterministic: the same inputs, the same digests; another time, not.
    let again = write_image(&store, &app_spec(&base, &layer, 1_700_000_000)).unwrap();
    assert_eq!(again, built);
    let later = write_image(&store, &app_spec(&base, &layer, 1_700_000_001)).unwrap();
    assert_ne!(later.manifest, built.manifest);

    // Tagged, it loads like any image, and its new layer unpacks.
    let name = built.tag(&store, "app:1").unwrap();
    assert_eq!(name, "docker.io/library/app:1");
    let image = load_image(&store, "app:1").unwrap();
    assert_eq!(image.manifest_digest, built.manifest);
    assert_eq!(image.config, app_config());
    assert_eq!(image.layers.len(), 2);
    let dir = ensure_unpacked(&store, &image.layers[1]).unwrap();
    assert_eq!(
        std::fs::read(dir.join("app/run")).unwrap(),
        b"#!/bin/sh\necho hello from app\n"
    );
}

#[test]
fn write_image_without_a_base_and_with_a_missing_layer() {
    let (_dir, store) = temp_store();
    let layer = app_layer(&store);
    let built = write_image(
        &store,
        &ImageSpec {
            base: None,
            layers: vec![layer.clone()],
            config: ImageConfig::default(),
            created: 0,
        },
    )
    .unwrap();
    let config = blob_json(&store, &built.config);
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(config["config"], json!({}));
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([layer.diff_id.to_string()])
    );
    assert_eq!(config["history"].as_array().unwrap().len(), 1);

    std::fs::remove_file(store.blob_path(&layer.digest)).unwrap();
    let err = write_image(
        &store,
        &ImageSpec {
            base: None,
            layers: vec![layer.clone()],
            config: ImageConfig::default(),
            created: 0,
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::BuildImage { .. }), "{err}");
    assert!(err.to_string().contains(&layer.digest.to_string()), "{err}");
}

// ---- saving ------------------------------------------------------------------------------

fn tar_members(path: &Path) -> Vec<Member> {
    members(&std::fs::read(path).unwrap())
}

#[test]
fn save_writes_an_oci_archive_that_docker_and_skopeo_read() {
    let (dir, store, base) = store_with_busybox();
    let (layer, built) = build_app(&store, &base);
    built.tag(&store, "app:1").unwrap();
    let name = "docker.io/library/app:1".to_owned();
    let out = dir.path().join("app.tar");
    save(&store, &[(name.clone(), built.manifest.clone())], &out).unwrap();

    let listed = tar_members(&out);
    let mut expected_blobs: Vec<String> = built
        .blobs
        .iter()
        .map(|d| format!("blobs/sha256/{}", d.hex()))
        .collect();
    expected_blobs.sort();
    let mut expected = vec!["blobs/".to_owned(), "blobs/sha256/".to_owned()];
    expected.extend(expected_blobs);
    expected.extend(["index.json", "manifest.json", "oci-layout"].map(String::from));
    assert_eq!(paths(&listed), expected, "sorted, each blob once");
    for m in &listed {
        assert_eq!((m.mtime, m.uid, m.gid), (0, 0, 0), "{}", m.path);
        if let Some(hex) = m
            .path
            .strip_prefix("blobs/sha256/")
            .filter(|h| !h.is_empty())
        {
            assert_eq!(
                Digest::of(&m.data).hex(),
                hex,
                "blob content matches its name"
            );
        }
    }
    let file = |p: &str| -> Value {
        serde_json::from_slice(&listed.iter().find(|m| m.path == p).unwrap().data).unwrap()
    };
    assert_eq!(file("oci-layout"), json!({"imageLayoutVersion": "1.0.0"}));
    assert_eq!(
        file("index.json"),
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": built.manifest.to_string(),
                "size": store.blob_size(&built.manifest).unwrap(),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": "1",
                },
            }],
        })
    );
    assert_eq!(
        file("manifest.json"),
        json!([{
            "Config": format!("blobs/sha256/{}", built.config.hex()),
            "RepoTags": ["app:1"],
            "Layers": [
                format!("blobs/sha256/{}", base.layers[0].digest.hex()),
                format!("blobs/sha256/{}", layer.digest.hex()),
            ],
        }])
    );

    // Deterministic to the byte.
    let out2 = dir.path().join("app-again.tar");
    save(&store, &[(name.clone(), built.manifest.clone())], &out2).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());

    // kiln imports it back to the same image.
    let (_fresh_dir, fresh) = temp_store();
    let imported = import(&fresh, &out, None).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, name);
    assert_eq!(imported[0].manifest_digest, built.manifest);
    let image = load_image(&fresh, "app:1").unwrap();
    assert_eq!(image.config, app_config());
    assert_eq!(
        image.layers[1],
        LayerRef {
            digest: layer.digest.clone(),
            size: layer.size,
            media_type: LAYER_MEDIA_TYPE_GZIP.to_owned(),
            diff_id: Some(layer.diff_id.clone()),
        }
    );

    if !skopeo_available() {
        return;
    }
    let out_arg = format!("oci-archive:{}", out.display());
    let inspected: Value = serde_json::from_slice(&skopeo(&["inspect", &out_arg])).unwrap();
    assert_eq!(inspected["Digest"], built.manifest.to_string());
    assert_eq!(
        inspected["Layers"],
        json!([base.layers[0].digest.to_string(), layer.digest.to_string()])
    );
    assert_eq!(inspected["Env"], json!([DEFAULT_PATH_ENV, "APP=1"]));

    let docker_arg = format!("docker-archive:{}", out.display());
    let inspected: Value = serde_json::from_slice(&skopeo(&["inspect", &docker_arg])).unwrap();
    assert_eq!(inspected["Env"], json!([DEFAULT_PATH_ENV, "APP=1"]));
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);

    // Copying reads every blob: skopeo checks the OCI blobs against their
    // digests, and the docker-archive layers against the config's diff_ids.
    for (i, source) in [&out_arg, &docker_arg].into_iter().enumerate() {
        let target = format!("oci:{}:copy", dir.path().join(format!("copy{i}")).display());
        skopeo(&["copy", "--quiet", "--insecure-policy", source, &target]);
    }
}

#[test]
fn save_several_images_sharing_a_base() {
    let (dir, store, base) = store_with_busybox();
    let (_layer, built) = build_app(&store, &base);
    let out = dir.path().join("both.tar");
    let images = [
        ("docker.io/library/app:1".to_owned(), built.manifest.clone()),
        (
            "localhost:5000/tools/app:2".to_owned(),
            built.manifest.clone(),
        ),
        (base.name.clone(), base.manifest_digest.clone()),
    ];
    save(&store, &images, &out).unwrap();

    let listed = tar_members(&out);
    let blob_members: Vec<_> = paths(&listed)
        .into_iter()
        .filter(|p| p.starts_with("blobs/sha256/") && p.len() > "blobs/sha256/".len())
        .collect();
    // app: manifest, config, busybox layer, app layer; busybox: manifest,
    // config (its layer is shared).
    assert_eq!(blob_members.len(), 6, "{blob_members:?}");
    let docker: Value = serde_json::from_slice(
        &listed
            .iter()
            .find(|m| m.path == "manifest.json")
            .unwrap()
            .data,
    )
    .unwrap();
    assert_eq!(
        docker[0]["RepoTags"],
        json!(["app:1", "localhost:5000/tools/app:2"])
    );
    assert_eq!(docker[1]["RepoTags"], json!(["busybox:test"]));

    let (_fresh_dir, fresh) = temp_store();
    let mut imported: Vec<_> = import(&fresh, &out, None)
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.manifest_digest))
        .collect();
    imported.sort();
    let mut expected = images.to_vec();
    expected.sort();
    assert_eq!(imported, expected);

    if !skopeo_available() {
        return;
    }
    // With several images, skopeo picks one by its ref.name (the tag).
    let inspected: Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}:test", out.display()),
    ]))
    .unwrap();
    assert_eq!(inspected["Digest"], base.manifest_digest.to_string());
    let inspected: Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        &format!(
            "docker-archive:{}:localhost:5000/tools/app:2",
            out.display()
        ),
    ]))
    .unwrap();
    assert_eq!(inspected["Env"], json!([DEFAULT_PATH_ENV, "APP=1"]));
}

#[test]
fn a_failed_save_names_the_blob_and_leaves_no_file() {
    let (dir, store, base) = store_with_busybox();
    let (layer, built) = build_app(&store, &base);
    let name = "docker.io/library/app:1".to_owned();
    let images = [(name.clone(), built.manifest.clone())];

    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let existing = out_dir.join("existing.tar");
    std::fs::write(&existing, b"an earlier save").unwrap();

    // A missing layer blob.
    std::fs::remove_file(store.blob_path(&layer.digest)).unwrap();
    let out = out_dir.join("app.tar");
    let err = save(&store, &images, &out).unwrap_err();
    assert!(
        matches!(&err, Error::SaveBlob { image, blob, .. } if image == &name && blob == &layer.digest.to_string()),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&name) && msg.contains(&layer.digest.to_string()),
        "{msg}"
    );
    assert!(!out.exists(), "no partial file");
    let err = save(&store, &images, &existing).unwrap_err();
    assert!(matches!(err, Error::SaveBlob { .. }), "{err}");
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"an earlier save",
        "an existing file is left as it was"
    );

    // A corrupt blob (same size, other bytes) is caught as it is copied,
    // and removed from the store.
    let app = app_layer(&store);
    assert_eq!(app, layer, "packed again from the layer");
    let base_layer = &base.layers[0].digest;
    let path = store.blob_path(base_layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = save(&store, &images, &out).unwrap_err();
    assert!(
        matches!(&err, Error::SaveBlob { blob, problem, .. } if blob == &base_layer.to_string() && problem.contains("corrupt")),
        "{err}"
    );
    assert!(!store.has_blob(base_layer), "the corrupt blob was removed");
    assert!(!out.exists());

    let mut left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["existing.tar"], "no temporary files left behind");
}
