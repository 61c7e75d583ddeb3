//! Hashing host directories and materializing them into layers.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use filetime::FileTime;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::WalkBuilder;

use crate::digest::{path_key, tree_digest, EntryKind, TreeEntry};
use crate::error::{io_at, Error};
use crate::index::{now_ns, MetadataIndex, Stamp};
use crate::util::{
    check_rel, create_work_dir, hash_copy, is_dir_empty, is_executable, open_beneath, parallel_try,
    running_as_root,
};

/// Name of kiln's own ignore files; same syntax as `.gitignore`.
pub const KILNIGNORE: &str = ".kilnignore";

/// Which files of a host directory take part.
///
/// Both lists hold gitignore-style globs relative to the root. A path takes
/// part when it is not ignored by a `.gitignore`/`.kilnignore`, not matched by
/// `exclude`, and — if `include` is non-empty — it or one of its parent
/// directories matches `include`. Directories that only lead to included
/// paths are kept so those paths have parents; others are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A hashed host directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTree {
    /// The canonicalized root directory.
    pub root: PathBuf,
    /// Sorted by path bytes; the root itself is not an entry.
    pub entries: Vec<TreeEntry>,
    pub digest: [u8; 32],
}

impl HostTree {
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

fn build_matcher(root: &Path, patterns: &[String]) -> Result<Gitignore, Error> {
    // Root "." keeps the matcher from stripping prefixes: we only ever pass
    // root-relative paths.
    let mut b = GitignoreBuilder::new(".");
    for p in patterns {
        b.add_line(None, p).map_err(|e| Error::Filter {
            path: root.to_path_buf(),
            pattern: p.clone(),
            message: e.to_string(),
        })?;
    }
    b.build().map_err(|e| Error::Filter {
        path: root.to_path_buf(),
        pattern: patterns.join(" "),
        message: e.to_string(),
    })
}

fn ignore_error_path(err: &ignore::Error) -> Option<&Path> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            ignore_error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child),
        ignore::Error::Partial(errs) => errs.iter().find_map(ignore_error_path),
        _ => None,
    }
}

enum Found {
    Dir,
    /// A regular file, with its metadata and content hash when the index
    /// still vouches for them.
    File(Option<(Stamp, [u8; 32])>),
    Symlink(PathBuf),
}

/// One path the walk yielded, relative to the root.
struct Walked {
    rel: PathBuf,
    kind: Found,
    /// Matched by the include filter itself (always true without one);
    /// directories leading to included paths are kept later.
    included: bool,
}

/// What the walk's threads share. Each thread stats the files it lists
/// and asks the index about them, so listing directories and checking files
/// overlap across cores instead of running one after the other.
struct WalkContext<'a> {
    root: &'a Path,
    root_len: usize,
    root_fd: &'a File,
    index: Option<&'a MetadataIndex>,
    include: Option<&'a Gitignore>,
    found: Mutex<Vec<Walked>>,
    /// The first error any thread met; the walk stops at it.
    error: Mutex<Option<Error>>,
}

struct Collectors<'a> {
    walk: &'a WalkContext<'a>,
}

impl<'a> ignore::ParallelVisitorBuilder<'a> for Collectors<'a> {
    fn build(&mut self) -> Box<dyn ignore::ParallelVisitor + 'a> {
        Box::new(Collector {
            walk: self.walk,
            found: Vec::new(),
        })
    }
}

/// One walk thread's findings, handed over when the thread is done.
struct Collector<'a> {
    walk: &'a WalkContext<'a>,
    found: Vec<Walked>,
}

impl Drop for Collector<'_> {
    fn drop(&mut self) {
        let mut all = self
            .walk
            .found
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.append(&mut self.found);
    }
}

impl ignore::ParallelVisitor for Collector<'_> {
    fn visit(&mut self, item: Result<ignore::DirEntry, ignore::Error>) -> ignore::WalkState {
        match self.take(item) {
            Ok(()) => ignore::WalkState::Continue,
            Err(err) => {
                let mut first = self
                    .walk
                    .error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                first.get_or_insert(err);
                ignore::WalkState::Quit
            }
        }
    }
}

impl Collector<'_> {
    fn take(&mut self, item: Result<ignore::DirEntry, ignore::Error>) -> Result<(), Error> {
        let walk = self.walk;
        let entry = item.map_err(|e| Error::Walk {
            path: ignore_error_path(&e).unwrap_or(walk.root).to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(err) = entry.error() {
            // A malformed line in an ignore file: git skips such lines too.
            tracing::warn!(path = %entry.path().display(), "ignore file problem: {err}");
        }
        if entry.depth() == 0 {
            return Ok(());
        }
        let Some(ft) = entry.file_type() else {
            return Ok(());
        };
        let Some(rel) = relative_to_root(entry.path(), walk.root_len) else {
            return Err(Error::Walk {
                path: entry.path().to_path_buf(),
                message: "walk left the root directory".into(),
            });
        };
        let included = walk.include.is_none_or(|include| {
            include
                .matched_path_or_any_parents(rel, ft.is_dir())
                .is_ignore()
        });
        let kind = if ft.is_dir() {
            Found::Dir
        } else if ft.is_file() {
            // Only a file that takes part is worth a stat.
            let known = walk.index.filter(|_| included).and_then(|index| {
                let st =
                    rustix::fs::statat(walk.root_fd, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .ok()?;
                let stamp = Stamp::of_stat(&st);
                index.lookup(rel, stamp).map(|content| (stamp, content))
            });
            Found::File(known)
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(io_at(entry.path()))?;
            Found::Symlink(target)
        } else {
            tracing::warn!(path = %entry.path().display(), "skipping special file");
            return Ok(());
        };
        self.found.push(Walked {
            rel: rel.to_path_buf(),
            kind,
            included,
        });
        Ok(())
    }
}

/// Walk and hash a host directory.
///
/// Honours `.gitignore` files (also outside a git repository) and
/// `.kilnignore` files found inside `root` (not in its parents, nor git's
/// global or `info/exclude` files: the result must depend only on what is
/// under `root`), then the [`Filter`]. `.kilnignore` rules take precedence
/// over `.gitignore` rules, so `!pattern` there can re-include a file git
/// ignores. Never follows symlinks (except `root` itself); always skips
/// anything named `.git` (a directory, or the gitlink file of a worktree or
/// submodule); hidden files are included unless ignored. Special files are
/// skipped with a warning.
pub fn hash_host_dir(root: &Path, filter: &Filter) -> Result<HostTree, Error> {
    hash_host_dir_indexed(root, filter, None)
}

/// [`hash_host_dir`], reusing the content hashes of files whose metadata
/// the index says is unchanged, and recording the ones it had to read.
pub fn hash_host_dir_indexed(
    root: &Path,
    filter: &Filter,
    mut index: Option<&mut MetadataIndex>,
) -> Result<HostTree, Error> {
    let root = fs::canonicalize(root).map_err(io_at(root))?;
    if !fs::metadata(&root).map_err(io_at(&root))?.is_dir() {
        return Err(Error::NotADirectory { path: root });
    }
    let exclude = Arc::new(build_matcher(&root, &filter.exclude)?);
    let include = build_matcher(&root, &filter.include)?;

    let mut builder = WalkBuilder::new(&root);
    builder
        .standard_filters(false)
        .hidden(false)
        .parents(false)
        .ignore(false)
        .git_global(false)
        .git_exclude(false)
        .git_ignore(true)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(KILNIGNORE);
    {
        let root_len = root.as_os_str().len();
        let has_excludes = !filter.exclude.is_empty();
        builder.filter_entry(move |e| {
            if e.depth() == 0 {
                return true;
            }
            if e.file_name() == ".git" {
                return false;
            }
            if !has_excludes {
                return true;
            }
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            match relative_to_root(e.path(), root_len) {
                Some(rel) => !exclude.matched(rel, is_dir).is_ignore(),
                None => true,
            }
        });
    }
    let root_fd = File::open(&root).map_err(io_at(&root))?;
    let walk_started = std::time::Instant::now();
    let walk = WalkContext {
        root: &root,
        root_len: root.as_os_str().len(),
        root_fd: &root_fd,
        index: index.as_deref(),
        include: (!filter.include.is_empty()).then_some(&include),
        found: Mutex::new(Vec::new()),
        error: Mutex::new(None),
    };
    builder
        .build_parallel()
        .visit(&mut Collectors { walk: &walk });
    let WalkContext { found, error, .. } = walk;
    if let Some(err) = error.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(err);
    }
    let mut found = found.into_inner().unwrap_or_else(PoisonError::into_inner);

    if !filter.include.is_empty() {
        let mut needed: HashSet<PathBuf> = HashSet::new();
        for walked in found.iter().filter(|w| w.included) {
            needed.extend(walked.rel.ancestors().skip(1).map(Path::to_path_buf));
        }
        found.retain(|w| w.included || needed.contains(&w.rel));
    }

    tracing::debug!(
        entries = found.len(),
        ms = walk_started.elapsed().as_secs_f64() * 1e3,
        "walked host directory"
    );
    // Walked paths are normal (names joined by single slashes), so their
    // bytes are their keys: no per-comparison normalization.
    found.sort_unstable_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });

    // Taken before any file is read: a file modified while we read it has a
    // later mtime, so its entry counts as racy and is read again next time.
    let started = now_ns();
    let unknown: Vec<&Path> = found
        .iter()
        .filter(|w| matches!(w.kind, Found::File(None)))
        .map(|w| w.rel.as_path())
        .collect();
    let mut hashed =
        parallel_try(&unknown, |rel| hash_file_beneath(&root_fd, &root, rel))?.into_iter();
    drop(unknown);
    let mut entries = Vec::with_capacity(found.len());
    for Walked { rel, kind, .. } in found {
        let kind = match kind {
            Found::Dir => EntryKind::Dir,
            Found::Symlink(target) => EntryKind::Symlink { target },
            Found::File(Some((stamp, content))) => EntryKind::File {
                executable: stamp.is_executable(),
                size: stamp.size(),
                content,
            },
            Found::File(None) => {
                let Some((kind, stamp)) = hashed.next() else {
                    unreachable!("one hash per unknown file")
                };
                if let (Some(index), EntryKind::File { content, .. }) =
                    (index.as_deref_mut(), &kind)
                {
                    index.record(rel.clone(), stamp, started, *content);
                }
                kind
            }
        };
        entries.push(TreeEntry { path: rel, kind });
    }
    if let Some(index) = index {
        // Another filter over the same root may still want the others.
        // Only an index holding more entries than the tree has files can
        // hold stale ones; the common unchanged case skips the sweep.
        let files = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count();
        if filter.include.is_empty() && filter.exclude.is_empty() && index.len() > files {
            use std::os::unix::ffi::OsStrExt;
            let present: HashSet<&[u8]> = entries
                .iter()
                .map(|e| e.path.as_os_str().as_bytes())
                .collect();
            index.retain_paths(&present);
        }
    }
    let digest = tree_digest(&entries);
    Ok(HostTree {
        root,
        entries,
        digest,
    })
}

fn hash_file_beneath(root_fd: &File, root: &Path, rel: &Path) -> Result<(EntryKind, Stamp), Error> {
    let path = root.join(rel);
    let mut f = open_beneath(root_fd, root, rel).map_err(|e| changed_or_io(&path, e))?;
    let meta = f.metadata().map_err(io_at(&path))?;
    if !meta.is_file() {
        return Err(Error::Changed { path });
    }
    let (size, content) = hash_copy(&mut f, None).map_err(io_at(&path))?;
    let kind = EntryKind::File {
        executable: is_executable(&meta),
        size,
        content,
    };
    Ok((kind, Stamp::of(&meta)))
}

/// The times of a [`HostTree`]'s entries as the host has them, read by
/// [`read_host_times`] and given to the layer by materializing.
///
/// Cache keys never see these (they are content only). They are what a step
/// sees, so that a source edited after a cache volume's outputs were built
/// looks newer than those outputs, as it does on the host to make or cargo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTimes {
    /// The modification time of each entry, in the tree's entry order.
    entries: Vec<FileTime>,
    /// The root directory's own time; not in the digest, since the root of
    /// a store layer carries the store's last-use time instead.
    root: FileTime,
    /// BLAKE3 over the entries' times: with the tree's digest, the identity
    /// of a layer materialized with these times.
    pub digest: [u8; 32],
}

impl HostTimes {
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The modification time of the tree's entry `index`.
    pub fn entry(&self, index: usize) -> Option<FileTime> {
        self.entries.get(index).copied()
    }
}

const HOST_TIMES_MAGIC: &[u8] = b"kiln-fs/host-times/v1\0";

/// Reads the modification time of every entry of `tree` (files, symlinks
/// themselves, directories) from the host, as it is now.
///
/// An entry that is gone or is no longer of its kind yields
/// [`Error::Changed`], as materializing would.
pub fn read_host_times(tree: &HostTree) -> Result<HostTimes, Error> {
    use rustix::fs::{AtFlags, FileType};
    let root_fd = File::open(&tree.root).map_err(io_at(&tree.root))?;
    let root = mtime_of_stat(&rustix::fs::fstat(&root_fd).map_err(io_at(&tree.root))?);
    let entries = parallel_try(&tree.entries, |entry| {
        let path = tree.root.join(&entry.path);
        let st = rustix::fs::statat(&root_fd, &entry.path, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| changed_or_io(&path, e.into()))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        let same_kind = match entry.kind {
            EntryKind::Dir => kind == FileType::Directory,
            EntryKind::File { .. } => kind == FileType::RegularFile,
            EntryKind::Symlink { .. } => kind == FileType::Symlink,
        };
        if !same_kind {
            return Err(Error::Changed { path });
        }
        Ok(mtime_of_stat(&st))
    })?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(HOST_TIMES_MAGIC);
    hasher.update(&(entries.len() as u64).to_le_bytes());
    for t in &entries {
        hasher.update(&t.unix_seconds().to_le_bytes());
        hasher.update(&t.nanoseconds().to_le_bytes());
    }
    Ok(HostTimes {
        entries,
        root,
        digest: *hasher.finalize().as_bytes(),
    })
}

fn mtime_of_stat(st: &rustix::fs::Stat) -> FileTime {
    // The field types differ between architectures (rustix mirrors the
    // kernel's struct); the kernel keeps nanoseconds below 1e9.
    #[allow(clippy::unnecessary_cast)]
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as u32);
    FileTime::from_unix_time(secs, nanos.min(999_999_999))
}

/// The file name of a content object: its hash, `-x` when executable, and
/// its mtime. Mode and mtime live on the inode every link shares, so both
/// are part of the identity: a file only shares an object with files of the
/// same bytes, mode and time. A file left alone on the host keeps its time,
/// so it still shares its object with every earlier version of the tree.
fn object_name(content: &[u8; 32], executable: bool, mtime: FileTime) -> String {
    let mut name = hex::encode(content);
    if executable {
        name.push_str("-x");
    }
    name.push_str(&format!(
        "-t{}.{:09}",
        mtime.unix_seconds(),
        mtime.nanoseconds()
    ));
    name
}

/// Copies one host file to `dst` with normalized owner and mode and the
/// given mtime, failing with [`Error::Changed`] if its bytes or executable
/// bit no longer match the tree.
#[allow(clippy::too_many_arguments)]
fn copy_normalized(
    root_fd: &File,
    tree: &HostTree,
    entry: &TreeEntry,
    src: &Path,
    dst: &Path,
    executable: bool,
    size: u64,
    content: &[u8; 32],
    mtime: FileTime,
    as_root: bool,
) -> Result<(), Error> {
    let mut from =
        open_beneath(root_fd, &tree.root, &entry.path).map_err(|e| changed_or_io(src, e))?;
    let meta = from.metadata().map_err(io_at(src))?;
    if !meta.is_file() || is_executable(&meta) != executable {
        return Err(Error::Changed {
            path: src.to_path_buf(),
        });
    }
    let mut to = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(io_at(dst))?;
    let (n, hash) = hash_copy(&mut from, Some(&mut to)).map_err(io_at(src))?;
    if n != size || hash != *content {
        return Err(Error::Changed {
            path: src.to_path_buf(),
        });
    }
    if as_root {
        std::os::unix::fs::fchown(&to, Some(0), Some(0)).map_err(io_at(dst))?;
    }
    let mode = if executable { 0o755 } else { 0o644 };
    to.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_at(dst))?;
    // The access time follows the mtime: it means nothing in a layer, and
    // the same tree and times then give identical layers.
    filetime::set_file_handle_times(&to, Some(mtime), Some(mtime)).map_err(io_at(dst))
}

/// `path` relative to the walk's root, which is its first `root_len` bytes:
/// every path the walker yields starts with the root exactly, so a byte
/// slice does what `Path::strip_prefix` does component by component, much
/// faster on large trees.
fn relative_to_root(path: &Path, root_len: usize) -> Option<&Path> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let rest = bytes.get(root_len..)?;
    let rest = rest.strip_prefix(b"/")?;
    Some(Path::new(std::ffi::OsStr::from_bytes(rest)))
}

/// Errors that mean "the tree no longer looks like when we listed it".
fn changed_or_io(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ELOOP | libc::EXDEV | libc::ENOTDIR) => Error::Changed {
            path: path.to_path_buf(),
        },
        _ => Error::io(path, e),
    }
}

/// Copy a hashed tree into `dest`, with the host times `times` read for it.
///
/// `dest` must be an empty directory or not exist yet (it is then created,
/// with its missing parents). Files get mode 0644 or 0755 by the executable
/// bit, directories (including `dest`) 0755, everything is owned by root when
/// running as root, and every entry gets its time from `times` (access time
/// = modification time; `dest` gets the root's), so two copies of the same
/// tree with the same times are identical layers. Every file is re-hashed
/// while copying; a file (or symlink) that differs from the tree yields
/// [`Error::Changed`]. On error `dest` is left partially filled: the caller
/// owns it and discards the layer being built.
pub fn materialize_host_tree(tree: &HostTree, times: &HostTimes, dest: &Path) -> Result<(), Error> {
    materialize(tree, times, dest, None)
}

/// [`materialize_host_tree`] through a content-addressed file store: each
/// distinct (bytes, executable bit, mtime) is copied into `objects` once
/// (named by all three, already normalized: root-owned, 0644/0755), and
/// `dest` gets hardlinks to them. Materializing a tree that differs from an
/// earlier one in one file copies that one file, as long as the other files
/// kept their times on the host.
///
/// Objects are shared by every layer that holds the same content, so they
/// must never be written through: layers are read-only lowers, and exports
/// and mounted directories copy.
pub fn materialize_host_tree_linked(
    tree: &HostTree,
    times: &HostTimes,
    dest: &Path,
    objects: &Path,
) -> Result<(), Error> {
    fs::create_dir_all(objects).map_err(io_at(objects))?;
    materialize(tree, times, dest, Some(objects))
}

fn materialize(
    tree: &HostTree,
    times: &HostTimes,
    dest: &Path,
    objects: Option<&Path>,
) -> Result<(), Error> {
    if times.entries.len() != tree.entries.len() {
        return Err(Error::Changed {
            path: tree.root.clone(),
        });
    }
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            if !is_dir_empty(dest)? {
                return Err(Error::NotEmpty {
                    path: dest.to_path_buf(),
                });
            }
        }
        Ok(_) => {
            return Err(Error::NotADirectory {
                path: dest.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_at(dest))?;
        }
        Err(e) => return Err(Error::io(dest, e)),
    }

    // Parents must be directories created by us, so a crafted entry list
    // (a symlink "a" followed by "a/x") cannot write outside `dest`.
    let mut dirs: HashSet<&Path> = HashSet::new();
    dirs.insert(Path::new(""));
    let mut created = Vec::new();
    for (entry, &mtime) in tree.entries.iter().zip(&times.entries) {
        check_rel(&entry.path)?;
        let parent = entry.path.parent().unwrap_or(Path::new(""));
        if !dirs.contains(parent) {
            return Err(Error::InvalidPath {
                path: entry.path.clone(),
                reason: "parent directory is not an earlier directory entry",
            });
        }
        if entry.kind == EntryKind::Dir {
            create_work_dir(&dest.join(&entry.path), false)?;
            dirs.insert(&entry.path);
            created.push((entry.path.as_path(), mtime));
        }
    }

    let as_root = running_as_root();
    let root_fd = File::open(&tree.root).map_err(io_at(&tree.root))?;
    let others: Vec<(&TreeEntry, FileTime)> = tree
        .entries
        .iter()
        .zip(times.entries.iter().copied())
        .filter(|(e, _)| e.kind != EntryKind::Dir)
        .collect();
    parallel_try(&others, |&(entry, mtime)| {
        let src = tree.root.join(&entry.path);
        let dst = dest.join(&entry.path);
        match &entry.kind {
            EntryKind::Dir => Ok(()),
            EntryKind::File {
                executable,
                size,
                content,
            } => match objects {
                Some(objects) => {
                    let object = objects.join(object_name(content, *executable, mtime));
                    match fs::hard_link(&object, &dst) {
                        Ok(()) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        // Too many links to one inode: this layer gets a copy.
                        Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {}
                        Err(e) => return Err(Error::io(&dst, e)),
                    }
                    // New content: write it into the layer, then name the
                    // finished file as the object. A process killed before
                    // the link leaves no object, never a partial one.
                    copy_normalized(
                        &root_fd,
                        tree,
                        entry,
                        &src,
                        &dst,
                        *executable,
                        *size,
                        content,
                        mtime,
                        as_root,
                    )?;
                    match fs::hard_link(&dst, &object) {
                        Ok(()) => Ok(()),
                        // Another thread or process stored the same bytes
                        // first: share its object rather than keep a copy.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            fs::remove_file(&dst).map_err(io_at(&dst))?;
                            fs::hard_link(&object, &dst).map_err(io_at(&dst))
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EMLINK) => Ok(()),
                        Err(e) => Err(Error::io(&object, e)),
                    }
                }
                None => copy_normalized(
                    &root_fd,
                    tree,
                    entry,
                    &src,
                    &dst,
                    *executable,
                    *size,
                    content,
                    mtime,
                    as_root,
                ),
            },
            EntryKind::Symlink { target } => {
                let now = fs::read_link(&src).map_err(|e| changed_or_io(&src, e))?;
                if now != *target {
                    return Err(Error::Changed { path: src });
                }
                std::os::unix::fs::symlink(target, &dst).map_err(io_at(&dst))?;
                if as_root {
                    std::os::unix::fs::lchown(&dst, Some(0), Some(0)).map_err(io_at(&dst))?;
                }
                filetime::set_symlink_file_times(&dst, mtime, mtime).map_err(io_at(&dst))
            }
        }
    })?;

    // Children before parents: writing a child bumps the parent's mtime.
    created.sort_by(|a, b| path_key(b.0).cmp(&path_key(a.0)));
    for (rel, mtime) in created.iter().copied().chain([(Path::new(""), times.root)]) {
        let dir = dest.join(rel);
        if as_root {
            std::os::unix::fs::lchown(&dir, Some(0), Some(0)).map_err(io_at(&dir))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_at(&dir))?;
        filetime::set_file_times(&dir, mtime, mtime).map_err(io_at(&dir))?;
    }
    Ok(())
}
