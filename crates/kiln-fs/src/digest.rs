//! The canonical tree encoding shared by host directories and merged views.

use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Version tag hashed first. Bump it whenever the encoding below changes, so
/// digests from different encodings can never collide by accident.
pub const TREE_DIGEST_MAGIC: &[u8] = b"kiln-fs/tree-digest/v1\0";

const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_SYMLINK: u8 = 3;

/// What a tree entry is. Only what the digest covers is recorded: no
/// ownership, timestamps or permission bits other than "executable".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    File {
        /// The owner-execute bit (`S_IXUSR`), the same rule git uses.
        executable: bool,
        size: u64,
        /// BLAKE3 of the file's bytes.
        content: [u8; 32],
    },
    Symlink {
        target: PathBuf,
    },
}

/// One entry of a tree, relative to the tree's root (no leading `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TreeEntry {
    pub path: PathBuf,
    pub kind: EntryKind,
}

/// The bytes entries are ordered and encoded by: the path's normal components
/// joined with `/`, so `a//b` and `a/./b` encode like `a/b`. Borrowed when the
/// path is already in that form, as every path a walk produces is: large
/// trees are keyed without an allocation per entry.
pub(crate) fn path_key(path: &Path) -> Cow<'_, [u8]> {
    let bytes = path.as_os_str().as_bytes();
    let normal = !bytes.is_empty()
        && bytes
            .split(|&b| b == b'/')
            .all(|seg| !seg.is_empty() && seg != b"." && seg != b"..");
    if normal {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    for c in path.components() {
        if let Component::Normal(name) = c {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(name.as_bytes());
        }
    }
    Cow::Owned(out)
}

/// Sorts entries by path bytes, the order [`tree_digest`] and
/// [`crate::HostTree::entries`] use.
pub fn sort_entries(entries: &mut [TreeEntry]) {
    entries.sort_by(|a, b| path_key(&a.path).cmp(&path_key(&b.path)));
}

/// Feeds the hasher in large blocks: BLAKE3's per-call cost dominates when
/// each entry is half a dozen updates of a few bytes. Chunking does not change
/// the digest, which covers the concatenated bytes only.
struct Buffered {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl Buffered {
    const BLOCK: usize = 64 * 1024;

    fn new() -> Buffered {
        Buffered {
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(Self::BLOCK + 4096),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= Self::BLOCK {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }

    fn finalize(mut self) -> [u8; 32] {
        self.hasher.update(&self.buf);
        *self.hasher.finalize().as_bytes()
    }
}

fn put_bytes(h: &mut Buffered, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Canonical digest of a tree. See the crate documentation for the encoding.
///
/// The entries need not be sorted; they are encoded in path-byte order.
pub fn tree_digest(entries: &[TreeEntry]) -> [u8; 32] {
    let mut keyed: Vec<(Cow<'_, [u8]>, &TreeEntry)> =
        entries.iter().map(|e| (path_key(&e.path), e)).collect();
    // Callers usually pass sorted entries; checking is cheaper than sorting.
    if !keyed.is_sorted_by(|a, b| a.0 <= b.0) {
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
    }

    let mut h = Buffered::new();
    h.update(TREE_DIGEST_MAGIC);
    h.update(&(keyed.len() as u64).to_le_bytes());
    for (key, entry) in keyed {
        put_bytes(&mut h, &key);
        match &entry.kind {
            EntryKind::Dir => {
                h.update(&[TAG_DIR]);
            }
            EntryKind::File {
                executable,
                size,
                content,
            } => {
                h.update(&[TAG_FILE, u8::from(*executable)]);
                h.update(&size.to_le_bytes());
                h.update(content);
            }
            EntryKind::Symlink { target } => {
                h.update(&[TAG_SYMLINK]);
                put_bytes(&mut h, target.as_os_str().as_bytes());
            }
        }
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, bytes: &[u8], executable: bool) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind: EntryKind::File {
                executable,
                size: bytes.len() as u64,
                content: *blake3::hash(bytes).as_bytes(),
            },
        }
    }

    /// The digest of a fixed tree, large enough to cross the hashing buffer's
    /// block size: a change here changes every cache key that covers a host
    /// directory, so it must come with a new `TREE_DIGEST_MAGIC`.
    #[test]
    fn digest_of_a_fixed_tree_is_pinned() {
        let mut entries = vec![TreeEntry {
            path: "d".into(),
            kind: EntryKind::Dir,
        }];
        entries.push(TreeEntry {
            path: "d/link".into(),
            kind: EntryKind::Symlink {
                target: "../x".into(),
            },
        });
        for i in 0..3000 {
            let name = format!("d/file-{i:05}.txt");
            entries.push(file(&name, name.as_bytes(), i % 7 == 0));
        }
        assert_eq!(
            hex::encode(tree_digest(&entries)),
            "573405e9026e2dd30ed4c7bb5995442447e82b40d7eb527935e2ed6630f02d15"
        );
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let a = vec![file("a", b"1", false), file("b/c", b"2", true)];
        let b = vec![a[1].clone(), a[0].clone()];
        assert_eq!(tree_digest(&a), tree_digest(&b));
    }

    #[test]
    fn path_spelling_is_normalised() {
        assert_eq!(&*path_key(Path::new("a//b/./c")), b"a/b/c");
        assert_eq!(&*path_key(Path::new("./a")), b"a");
        assert_eq!(&*path_key(Path::new("a/b")), b"a/b");
        assert!(matches!(path_key(Path::new("a/b")), Cow::Borrowed(_)));
        assert_eq!(&*path_key(Path::new("/a/../b")), b"a/b");
    }

    #[test]
    fn sorting_is_by_bytes_not_components() {
        let mut v = vec![
            file("a/b", b"", false),
            file("a-b", b"", false),
            file("a", b"", false),
        ];
        sort_entries(&mut v);
        let names: Vec<_> = v.iter().map(|e| e.path.clone()).collect();
        assert_eq!(names, [PathBuf::from("a"), "a-b".into(), "a/b".into()]);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Without length prefixes, "ab" -> "c" and "a" -> "bc" could encode
        // the same byte stream.
        let l = |p: &str, t: &str| TreeEntry {
            path: p.into(),
            kind: EntryKind::Symlink { target: t.into() },
        };
        assert_ne!(tree_digest(&[l("ab", "c")]), tree_digest(&[l("a", "bc")]));
        // An empty dir is content too.
        let d = TreeEntry {
            path: "d".into(),
            kind: EntryKind::Dir,
        };
        assert_ne!(tree_digest(&[]), tree_digest(&[d]));
        // Kinds differ even with identical names.
        assert_ne!(
            tree_digest(&[file("x", b"", false)]),
            tree_digest(&[l("x", "")])
        );
        assert_ne!(
            tree_digest(&[file("x", b"", false)]),
            tree_digest(&[file("x", b"", true)])
        );
    }
}
