//! Test fixtures for kiln's crates, built at test time from the host, with no downloads.
//!
//! The busybox image used across the test suites comes from the host's
//! `busybox-static` (`/bin/busybox`), so tests run offline.
//!
//! Layer tarballs ([`LayerBuilder`], [`busybox_layer`]) and whole images in
//! the formats kiln imports ([`write_oci_layout`], [`write_oci_archive`],
//! [`write_docker_save`], [`write_oci_index_layout`], [`busybox_image`]) are
//! generated in Rust too, including the hostile layers the unpacker must
//! refuse.

mod image;
mod layer;
mod process;
mod registry;

pub use image::{
    busybox_config, busybox_fixture, busybox_image, host_oci_arch, sha256_digest,
    write_docker_save, write_docker_save_images, write_oci_archive, write_oci_archive_images,
    write_oci_index_layout, write_oci_layout, write_oci_layout_images, ImageFixture, IndexStyle,
    WrittenImage, WrittenIndex, CONFIG_MEDIA_TYPE, DEFAULT_PATH_ENV, INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE, REF_NAME_ANNOTATION,
};
pub use layer::{
    busybox_layer, compress, decompress, layer_from_dir, typeflag, Compression, LayerBuilder,
    RawEntry, DEFAULT_MTIME,
};
pub use process::{process_alive, runtime_containers, sleeper_alive};
pub use registry::{Fault, FaultAction, FaultProxy, ProxiedRequest, TestRegistry};

use std::path::{Path, PathBuf};

/// Where the host's static busybox lives; the set-up script installs it.
pub fn host_busybox() -> PathBuf {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = PathBuf::from(candidate);
        if p.exists() {
            return p;
        }
    }
    panic!("busybox not found: install busybox-static (scripts/setup.sh does this)");
}

/// The applets linked into test root filesystems.
pub const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "ls",
    "env",
    "pwd",
    "id",
    "md5sum",
    "find",
    "sort",
    "xargs",
    "sleep",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "test",
    "[",
    "true",
    "false",
    "printf",
    "wc",
    "head",
    "tail",
    "grep",
    "sed",
    "expr",
    "date",
    "base64",
    "hexdump",
    "od",
    "tr",
    "stat",
    "ln",
    "chmod",
    "seq",
    "whoami",
    "hostname",
    "wget",
    "ping",
    "ip",
    "kill",
    "tee",
    "dd",
    "sha256sum",
    "uname",
];

/// Writes a minimal busybox root filesystem into `dir`: `/bin/busybox`, applet
/// symlinks, `/etc/passwd` and `/etc/group` with root and nobody, and `/tmp`.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin");
    std::fs::copy(host_busybox(), bin.join("busybox")).expect("copy busybox");
    for applet in APPLETS {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("applet symlink");
        }
    }
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).expect("create etc");
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nbuilder:x:1000:1000:builder:/home/builder:/bin/sh\n",
    )
    .expect("write passwd");
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nnogroup:x:65534:\nbuilder:x:1000:\n",
    )
    .expect("write group");
    for d in ["tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).expect("create dir");
    }
}

/// Every regular file under `dir`, recursively, without following symlinks.
/// Tests use it to search a whole store for bytes that must not be there.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(entry.path()),
                Ok(ft) if ft.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files
}

/// Whether tests that run real containers can run here: root and a working
/// runc. When they cannot, this prints why and returns false so the test
/// can return early, unless `KILN_REQUIRE_PRIVILEGED` (or
/// `KILN_REQUIRE_RUNC`) is set, as CI sets it: then it panics, because a
/// skipped container test in CI would be a test that cannot fail.
pub fn privileged() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let runc = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && runc {
        return true;
    }
    let why = if root {
        "runc is not installed"
    } else {
        "not running as root"
    };
    let required = ["KILN_REQUIRE_PRIVILEGED", "KILN_REQUIRE_RUNC"]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    if required {
        panic!("this test needs root and runc: {why}");
    }
    eprintln!("skipping: this test needs root and runc ({why})");
    false
}
