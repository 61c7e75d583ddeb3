//! Container images for kiln: references, import from files, and safe layer
//! unpacking into the store.
//!
//! # References
//!
//! [`Reference`] parses `name`, `name:tag`, `host:port/name:tag` and
//! `name@sha256:...`, normalising Docker Hub short names the way `docker`
//! does (`alpine:3.20` is `docker.io/library/alpine:3.20`, `busybox` is
//! `docker.io/library/busybox:latest`). The normalised form is the image's
//! tag in the store, so every spelling of a name finds the same image.
//!
//! # Formats imported
//!
//! [`import`] takes a path and works out what it is from its contents:
//!
//! - an **OCI image layout** directory (`oci-layout`, `index.json`,
//!   `blobs/sha256/...`);
//! - an **OCI archive**: the same layout in a tar;
//! - a **`docker save`** tarball (`manifest.json` listing `Config`,
//!   `RepoTags` and `Layers`). It has no manifest blob, so kiln synthesises
//!   an OCI manifest over the config and layers as stored. Docker 25+ saves
//!   also carry an OCI `index.json`, which is then preferred.
//!
//! Archives may themselves be gzip- or zstd-compressed. Layers may be
//! uncompressed, gzip or zstd, told apart by magic bytes rather than media
//! types. An image index is resolved to the host platform's manifest
//! ([`host_platform`]); only that manifest and its blobs are stored.
//! Every blob is verified against its digest on the way in (docker save
//! members get theirs computed), and nothing that fails is stored. The
//! store pins each tagged image's manifest, config and layers.
//!
//! # Unpacking rules
//!
//! [`unpack_layer`] writes a layer into an empty directory in overlayfs
//! format, treating every entry as hostile. It refuses, with an error naming
//! the entry:
//!
//! - paths with a `..` component, absolute paths (a leading `./` is fine),
//!   and paths over 4096 bytes;
//! - entries whose parent path passes through a symlink: directories are
//!   opened one component at a time with `O_NOFOLLOW` from the destination
//!   down, so "symlink `etc` to `/etc`, then write `etc/passwd`" cannot
//!   leave the tree, nor can any other route through a symlink;
//! - hardlinks whose target is absolute, has `..`, passes through a symlink,
//!   or is not already in the layer;
//! - symlinks whose *relative* target climbs above the root when resolved
//!   from the link's directory. Absolute targets (`/usr/share/zoneinfo/UTC`)
//!   are kept: inside the container they resolve within its root, and the
//!   unpacker never writes through any symlink;
//! - character and block devices (fifos are fine).
//!
//! OCI whiteouts become overlayfs ones: `dir/.wh.name` removes anything this
//! layer already put at `dir/name` and leaves a character device 0:0 there;
//! `dir/.wh..wh..opq` sets `trusted.overlay.opaque=y` on `dir`. Whiteout
//! entries never appear in the result. A directory recreated over a whiteout
//! in the same layer is made opaque, so lower contents stay deleted.
//!
//! Modes (setuid, setgid and sticky included), owners (when running as
//! root) and mtimes are applied without following symlinks. Of PAX extended
//! attributes only `user.*` and `security.capability` are applied; others
//! (notably `trusted.overlay.*`, which could redirect overlayfs lookups) are
//! skipped. A later entry for a path replaces an earlier one, except that a
//! directory over a directory keeps its children. A truncated or corrupt tar
//! or compressed stream is reported as such.
//!
//! [`ensure_unpacked`] unpacks a stored layer blob into a staging directory
//! and commits it atomically as the layer named by the blob digest.

mod compression;
mod error;
mod image;
mod import;
mod reference;
mod unpack;

pub use compression::Compression;
pub use error::{Error, Result};
pub use image::{
    ensure_unpacked, list_images, load_image, Image, ImageConfig, ImageSummary, LayerRef,
};
pub use import::{import, ImportedImage};
pub use reference::{Reference, DEFAULT_DOMAIN};
pub use unpack::{unpack_layer, UnpackStats, MAX_PATH_LEN, OPAQUE_XATTR};

/// The host platform in OCI terms: `("linux", "amd64")` on x86-64 Linux.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    };
    (std::env::consts::OS, arch)
}
