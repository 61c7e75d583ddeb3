//! Filesystem trees for kiln: hashing host directories, merged views of
//! layer stacks, and materializing and exporting trees.
//!
//! # Layers
//!
//! A container filesystem is a stack of *layer* directories, mounted by the
//! kernel as overlayfs lower directories. Layers are stored in overlayfs'
//! own on-disk format, so they can be mounted as they are:
//!
//! - a path deleted by a layer is a **whiteout**: a character device with
//!   device number 0:0 (see [`write_whiteout`], [`is_whiteout`]);
//! - a directory that hides everything below it in lower layers is
//!   **opaque**: it carries the xattr `trusted.overlay.opaque` = `y` (see
//!   [`set_opaque`], [`is_opaque`]).
//!
//! Layers are immutable once written, which is what makes it safe for
//! [`MergedView::link_into`] to hardlink files out of them.
//!
//! [`MergedView`] reads a stack of layers the way overlayfs would, without a
//! mount: the topmost layer wins; a whiteout hides the name in every layer
//! below it; directories merge down until an opaque directory, a whiteout or
//! a non-directory ends the merge; the roots of the layers always merge.
//! Symlinks are resolved by the view itself, clamped at its root, so a layer
//! can never make kiln read host files outside the layers.
//!
//! # Tree digest
//!
//! Host directories are keyed by content: [`hash_host_dir`] and
//! [`MergedView::digest`] compute the same canonical digest for the same
//! content, so a directory on the host and the same files inside a container
//! hash equal. The digest is BLAKE3 over this byte stream (integers are
//! unsigned little-endian; `len` is a u64 byte count):
//!
//! ```text
//! "kiln-fs/tree-digest/v1\0"            version tag (TREE_DIGEST_MAGIC)
//! u64  number of entries
//! for each entry, in ascending byte order of its path:
//!     len, path bytes                   relative, components joined by '/'
//!     u8 tag, then by tag:
//!       1 directory                     (nothing more)
//!       2 regular file                  u8 executable (0|1), u64 size,
//!                                       32 bytes BLAKE3 of the content
//!       3 symlink                       len, target bytes (not resolved)
//! ```
//!
//! Every variable-length field is length-prefixed and every record starts
//! with a known-length prefix, so two different trees cannot produce the
//! same stream. The root directory itself is not an entry, so its name,
//! mode and location do not count. Nor do mtimes, owners, inode numbers,
//! hardlink structure, xattrs or any permission bit other than
//! "executable" (the owner-execute bit, as in git). Special files (FIFOs,
//! sockets, devices) are not part of trees.

mod digest;
mod error;
mod export;
mod host;
mod index;
mod layer;
mod merged;
mod util;

pub use digest::{sort_entries, tree_digest, EntryKind, TreeEntry, TREE_DIGEST_MAGIC};
pub use error::Error;
pub use export::{export_dir, export_file};
pub use host::{
    hash_host_dir, hash_host_dir_indexed, materialize_host_tree, materialize_host_tree_linked,
    read_host_times, Filter, HostTimes, HostTree, KILNIGNORE,
};
pub use index::MetadataIndex;
pub use layer::{is_opaque, is_whiteout, set_opaque, write_whiteout, OPAQUE_XATTR};
pub use merged::{Located, MergedEntry, MergedView};
