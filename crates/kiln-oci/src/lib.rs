//! Container images for kiln: references, import from files, safe layer
//! unpacking into the store, and export: deterministic layer packing, image
//! building and saving to OCI archives.
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
//! members get theirs computed), and nothing that fails is stored. Then,
//! as `docker load` does, each layer is decompressed and hashed: the config
//! must list exactly one `rootfs.diff_ids` entry per layer, and each must
//! be the sha256 of that layer's uncompressed tar; otherwise the image is
//! refused ([`Error::DiffIdMismatch`] names the layer index and both
//! digests) and nothing is tagged. The store pins each tagged image's
//! manifest, config and layers. Images that reach the store another way (a
//! registry pull) are checked when their layers are unpacked:
//! [`load_image`] refuses a diff_id count that does not match, and
//! [`ensure_unpacked`] compares each layer's diff_id as it unpacks it.
//!
//! # Limits
//!
//! A few kilobytes of gzip or zstd can expand to terabytes, so unpacking
//! and import count each layer's uncompressed bytes (plus the holes of
//! sparse files) as they are read, and stop with [`Error::TooLarge`] the
//! moment a limit of [`UnpackLimits`] is passed: `max_layer_bytes` (8 GiB by
//! default, `KILN_MAX_LAYER_BYTES`), `max_image_bytes` for an image's layers
//! together and for a compressed archive being imported (32 GiB,
//! `KILN_MAX_IMAGE_BYTES`), and `max_layer_entries` (2^21,
//! `KILN_MAX_LAYER_ENTRIES`). An entry whose header declares more than is
//! left is refused before anything of it is written, and an entry's
//! extension headers (which the tar reader holds in memory) are capped at
//! [`MAX_ENTRY_HEADER_BYTES`]. A refused layer is never committed: its
//! staging directory is removed.
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
//! `dir/.wh..wh..opq` sets `trusted.overlay.opaque=y` on `dir`, and a
//! `.wh..wh..opq` at the layer root sets it on the layer's root. Overlayfs
//! ignores that mark on a layer root, so [`visible_layers`] cuts a layer
//! stack at the topmost opaque root: whoever mounts the layers must stack
//! what it returns. Whiteout entries never appear in the result. A
//! directory recreated over a whiteout in the same layer is made opaque, so
//! lower contents stay deleted.
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
//! and commits it atomically as the layer named by the blob digest, if it
//! is within the limits and matches its diff_id.
//!
//! # Export: packing, building and saving images
//!
//! The same inputs give the same digests on every run and every machine.
//! Times come from the caller: `SOURCE_DATE_EPOCH` when set (read it with
//! [`source_date_epoch`]), else 0; never the clock.
//!
//! [`pack_layer`] turns a layer directory of the store (overlayfs format)
//! into a gzipped OCI layer blob; it is the inverse of [`unpack_layer`]:
//!
//! - Entries are in byte order of their archive paths, parents before
//!   children, relative without `./`, directories with a trailing `/`. The
//!   one exception: an opaque directory's `dir/.wh..wh..opq` comes right
//!   after the directory, before its children (an opaque layer root's
//!   `.wh..wh..opq` first of all).
//! - Every mtime is the given one; no atime, ctime, user or group names, or
//!   device numbers. Owners are the numeric ones in the layer when kiln runs
//!   as root (container owners), else 0. Permission bits are kept, setuid,
//!   setgid and sticky included; a symlink's mode is always 0777.
//! - overlayfs whiteouts (character device 0:0) become empty `dir/.wh.name`
//!   files; a directory with `trusted.overlay.opaque=y` (or
//!   `user.overlay.opaque=y`, rootless overlayfs) gets an opaque marker.
//!   Only `y` counts: the kernel writes `x` on a directory that merely holds
//!   whiteouts.
//! - Of extended attributes only `security.capability` is written (as a PAX
//!   record), as docker does: it is what a program needs to run. `trusted.*`
//!   (overlayfs bookkeeping, which could redirect lookups), SELinux labels
//!   and `user.*` never leave the host.
//! - A file, symlink or fifo whose inode was already written earlier in the
//!   same layer becomes a hardlink to that earlier path. Links to content
//!   objects outside the layer say nothing, so `nlink > 1` alone never makes
//!   a hardlink entry.
//! - Refused, with an error naming the path: device nodes other than
//!   whiteouts (kiln never creates them) and names starting with `.wh.`,
//!   which would read back as whiteouts. Sockets are left out with a
//!   warning. Long names use the tar crate's GNU long-name entries.
//! - The tar is streamed through sha256 (the diff_id) and gzip (level 6, no
//!   file name, mtime 0, OS "unknown") into a store blob, never held in
//!   memory. The gzip bytes are those of flate2's miniz_oxide backend; a
//!   pinned unit test catches a change.
//!
//! Layers are immutable (redirect_dir and metacopy are off, so an upper
//! directory holds whole files), so the result is recorded in the action
//! cache under `oci-pack-v1-<layer>-<mtime>`; a record whose blob has been
//! pruned is treated as absent.
//!
//! [`write_image`] writes an OCI image config and manifest over a base
//! image in the store (its layers reused as they are) and packed layers.
//! JSON is serialised from structs, so field order is fixed. [`save`]
//! writes images to one tar that is an OCI archive (`index.json` naming each
//! image by `io.containerd.image.name` and, with the tag,
//! `org.opencontainers.image.ref.name`) and a `docker save` tarball
//! (`manifest.json`), deterministically; blobs are verified as they are
//! copied, and the file appears by rename only when complete.

mod build;
mod compression;
mod error;
mod image;
mod import;
mod limits;
mod pack;
mod reference;
mod save;
mod unpack;

pub use build::{write_image, BaseImage, BuiltImage, ImageSpec};
pub use compression::Compression;
pub use error::{Error, Result};
pub use image::{
    ensure_image_unpacked, ensure_unpacked, ensure_unpacked_with, list_images, load_image, Image,
    ImageConfig, ImageSummary, LayerRef,
};
pub use import::{import, import_with, ImportedImage};
pub use limits::{ImageBudget, Limit, UnpackLimits, MAX_ENTRY_HEADER_BYTES};
pub use pack::{pack_layer, PackOptions, PackedLayer, LAYER_MEDIA_TYPE_GZIP};
pub use reference::{Reference, DEFAULT_DOMAIN};
pub use save::save;
pub use unpack::{
    layer_root_is_opaque, unpack_layer, unpack_layer_with, visible_layers, UnpackOptions,
    UnpackStats, MAX_PATH_LEN, OPAQUE_XATTR,
};

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

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) as seconds, or `None` when
/// it is unset or empty: the time to give [`PackOptions::mtime`] and
/// [`ImageSpec::created`] (callers use 0 when there is none).
pub fn source_date_epoch() -> Result<Option<u64>> {
    let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH") else {
        return Ok(None);
    };
    let value = value.to_string_lossy().into_owned();
    parse_source_date_epoch(&value)
}

fn parse_source_date_epoch(value: &str) -> Result<Option<u64>> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    trimmed
        .parse::<u64>()
        .map(Some)
        .map_err(|e| Error::InvalidSourceDateEpoch {
            value: value.to_owned(),
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_values() {
        assert_eq!(parse_source_date_epoch("").unwrap(), None);
        assert_eq!(
            parse_source_date_epoch("1700000000").unwrap(),
            Some(1_700_000_000)
        );
        assert_eq!(parse_source_date_epoch(" 0\n").unwrap(), Some(0));
        for bad in ["-1", "yesterday", "1.5"] {
            let err = parse_source_date_epoch(bad).unwrap_err();
            assert!(err.to_string().contains("SOURCE_DATE_EPOCH"), "{err}");
        }
    }
}
