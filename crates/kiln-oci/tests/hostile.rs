//! Hostile layers: each must be refused with an error naming the entry, and
//! nothing may be written outside the destination.

mod common;

use common::Scratch;
use kiln_oci::Error;
use kiln_testkit::{LayerBuilder, RawEntry};

/// Unpacks `layer`, expects a refusal naming `entry`, and checks that
/// nothing outside dest changed.
fn refused(layer: LayerBuilder, entry: &str) -> (Scratch, String) {
    let s = Scratch::new();
    let err = s.unpack(&layer).expect_err("hostile layer must be refused");
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::UnsafeEntry { entry: e, .. } if e == entry),
        "expected a refusal of {entry:?}, got: {msg}"
    );
    assert!(
        msg.contains(&format!("{entry:?}")),
        "message must name the entry: {msg}"
    );
    s.assert_outside_untouched();
    (s, msg)
}

#[test]
fn parent_dir_escape() {
    let (s, msg) = refused(
        LayerBuilder::new()
            .file("ok", b"", 0o644)
            .file("../escape", b"pwned", 0o644),
        "../escape",
    );
    assert!(msg.contains(".."), "{msg}");
    assert!(!s.base.path().join("escape").exists());
}

#[test]
fn dot_dot_in_the_middle() {
    let (s, _) = refused(
        LayerBuilder::new()
            .dir("a", 0o755)
            .file("a/../../x", b"pwned", 0o644),
        "a/../../x",
    );
    assert!(!s.base.path().join("x").exists());
}

#[test]
fn absolute_paths() {
    // First an absolute path pointing right next to dest, so a bug shows up
    // as a file the sentinel check sees; then the literal "/abs".
    let s = Scratch::new();
    let next_to_dest = s.base.path().join("outside/abs");
    let entry = next_to_dest.to_str().unwrap().to_owned();
    let err = s
        .unpack(&LayerBuilder::new().file(&entry, b"pwned", 0o644))
        .unwrap_err();
    assert!(
        err.to_string().contains(&entry) && err.to_string().contains("absolute"),
        "{err}"
    );
    s.assert_outside_untouched();

    refused(LayerBuilder::new().file("/abs", b"pwned", 0o644), "/abs");
    assert!(!std::path::Path::new("/abs").exists());
}

#[test]
fn write_through_a_symlink_to_an_outside_directory() {
    let s = Scratch::new();
    let outside = s.base.path().join("outside");
    let layer = LayerBuilder::new()
        .symlink("link", outside.to_str().unwrap())
        .file("link/passwd", b"pwned", 0o644);
    let err = s.unpack(&layer).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::UnsafeEntry { entry, .. } if entry == "link/passwd"),
        "{msg}"
    );
    assert!(msg.contains("symlink"), "{msg}");
    s.assert_outside_untouched();
    // The symlink itself is fine (absolute targets are kept).
    assert_eq!(std::fs::read_link(s.dest.join("link")).unwrap(), outside);
}

/// Runs `f` on a fresh thread with its own mount namespace and a decoy
/// tmpfs on /etc, so that if a regression ever lets `link -> /` be written
/// through, it clobbers the decoy and fails the test instead of the host's
/// /etc/passwd. The namespace dies with the thread. Without root there is
/// no namespace, but then the host's /etc is not writable either.
fn with_decoy_etc(f: impl FnOnce() + Send + 'static) {
    const DECOY: &[u8] = b"decoy:x:0:0::/:/bin/false\n";
    if !common::is_root() {
        f();
        return;
    }
    let result = std::thread::spawn(move || {
        use rustix::mount::{mount, mount_change, MountFlags, MountPropagationFlags};
        // Each step must succeed before the hostile layer is unpacked.
        rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNS)
            .expect("unshare the mount namespace");
        mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .expect("make mounts private");
        mount(
            "tmpfs",
            "/etc",
            "tmpfs",
            MountFlags::empty(),
            "size=1m,mode=0755",
        )
        .expect("mount decoy /etc");
        std::fs::write("/etc/passwd", DECOY).expect("write decoy passwd");
        f();
        assert_eq!(
            std::fs::read("/etc/passwd").unwrap(),
            DECOY,
            "decoy /etc/passwd changed"
        );
        assert_eq!(
            std::fs::read_dir("/etc").unwrap().count(),
            1,
            "something written into /etc"
        );
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn symlink_to_root_then_etc_passwd() {
    with_decoy_etc(|| {
        refused(
            LayerBuilder::new().symlink("link", "/").file(
                "link/etc/passwd",
                b"root::0:0::/:/bin/sh\n",
                0o644,
            ),
            "link/etc/passwd",
        );
    });
}

#[test]
fn symlinked_directory_inside_the_layer_is_not_followed_either() {
    // Even a symlink that stays inside the tree is never written through:
    // the write would land somewhere the tar did not say.
    let (s, msg) = refused(
        LayerBuilder::new()
            .dir("real", 0o755)
            .symlink("a", "real")
            .file("a/file", b"x", 0o644),
        "a/file",
    );
    assert!(msg.contains("symlink \"a\""), "{msg}");
    assert!(!s.dest.join("real/file").exists());
}

#[test]
fn symlink_climbing_out_with_relative_target() {
    let (_, msg) = refused(LayerBuilder::new().symlink("link", "../.."), "link");
    assert!(msg.contains("climbs above"), "{msg}");
    refused(
        LayerBuilder::new().symlink("a/b/link", "../../../etc"),
        "a/b/link",
    );
    refused(LayerBuilder::new().symlink("link", "x/../../y"), "link");
    // Staying inside is fine, however deep the '..' chain.
    let s = Scratch::new();
    s.unpack(&LayerBuilder::new().symlink("a/b/link", "../../etc/passwd"))
        .unwrap();
    s.assert_outside_untouched();
}

#[test]
fn hardlink_climbing_out() {
    let (_, msg) = refused(
        LayerBuilder::new()
            .dir("a", 0o755)
            .hardlink("a/h", "../../etc/passwd"),
        "a/h",
    );
    assert!(
        msg.contains("hardlink target") && msg.contains(".."),
        "{msg}"
    );
}

#[test]
fn hardlink_to_an_absolute_path() {
    with_decoy_etc(|| {
        let (s, msg) = refused(LayerBuilder::new().hardlink("h", "/etc/passwd"), "h");
        assert!(msg.contains("absolute"), "{msg}");
        assert!(!s.dest.join("h").exists());
    });
}

#[test]
fn hardlink_through_a_symlink() {
    let s = Scratch::new();
    let outside = s.base.path().join("outside");
    std::fs::remove_dir(&outside).unwrap();
    std::fs::write(&outside, b"outside file").unwrap();
    let layer = LayerBuilder::new()
        .symlink("up", s.base.path().to_str().unwrap())
        .hardlink("h", "up/outside");
    let err = s.unpack(&layer).unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeEntry { entry, why } if entry == "h" && why.contains("symlink")),
        "{err}"
    );
    assert!(!s.dest.join("h").exists());
    assert_eq!(
        std::fs::metadata(&outside)
            .map(|m| std::os::unix::fs::MetadataExt::nlink(&m))
            .unwrap(),
        1
    );
}

#[test]
fn hardlink_to_something_not_in_the_layer() {
    let (_, msg) = refused(LayerBuilder::new().hardlink("h", "missing/file"), "h");
    assert!(msg.contains("not in this layer"), "{msg}");
}

#[test]
fn device_nodes_are_left_out_and_named() {
    // A host device in a layer would reach the host from the step; /dev
    // comes from the runtime. The layer still unpacks (debootstrap output
    // has dev/ entries), as `docker import` takes it.
    let s = Scratch::new();
    let stats = s
        .unpack(
            &LayerBuilder::new()
                .dir("dev", 0o755)
                .char_device("dev/mem", 1, 1)
                .block_device("sda", 8, 0)
                // A char device 0:0 written as an entry (not as .wh.) is no
                // whiteout either: whiteouts only come from the OCI spelling.
                .char_device("fake-whiteout", 0, 0)
                .file("kept", b"ok", 0o644),
        )
        .expect("a layer with device nodes unpacks");
    assert_eq!(stats.devices_dropped, 3);
    assert_eq!(stats.dropped_devices, ["dev/mem", "sda", "fake-whiteout"]);
    for gone in ["dev/mem", "sda", "fake-whiteout"] {
        assert!(
            std::fs::symlink_metadata(s.dest.join(gone)).is_err(),
            "{gone}"
        );
    }
    assert!(s.dest.join("kept").is_file());
    s.assert_outside_untouched();
}

#[test]
fn path_longer_than_the_limit() {
    let long = "a/".repeat(2100) + "f";
    let (_, msg) = refused(LayerBuilder::new().file(&long, b"", 0o644), &long);
    assert!(msg.contains("4096"), "{msg}");
}

#[test]
fn whiteouts_cannot_escape_either() {
    refused(
        LayerBuilder::new().raw_entry(RawEntry::new("../.wh.x", b'0')),
        "../.wh.x",
    );
    refused(
        LayerBuilder::new().raw_entry(RawEntry::new("a/.wh...", b'0')),
        "a/.wh...",
    );
    let s = Scratch::new();
    let outside = s.base.path().join("outside");
    let layer = LayerBuilder::new()
        .symlink("link", outside.to_str().unwrap())
        .whiteout("link/victim")
        .opaque("link");
    let err = s.unpack(&layer).unwrap_err();
    assert!(err.to_string().contains("link/.wh.victim"), "{err}");
    s.assert_outside_untouched();
}
