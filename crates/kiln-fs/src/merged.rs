//! Read-only merged views of overlayfs-format layer stacks.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::digest::{path_key, tree_digest, EntryKind, TreeEntry};
use crate::error::{io_at, Error};
use crate::layer::{is_opaque, is_whiteout};
use crate::util::{
    atime_of, create_work_dir, hash_copy, is_executable, mtime_of, open_nofollow, parallel_try,
    running_as_root,
};

/// Linux's MAXSYMLINKS: the same budget the kernel gives a path walk.
const MAX_SYMLINKS: usize = 40;

/// A path resolved in a [`MergedView`].
#[derive(Clone, Debug)]
pub struct Located {
    /// Index into the view's layers (0 = topmost) of the visible copy.
    pub layer_index: usize,
    /// The visible copy on the host.
    pub host_path: PathBuf,
    /// `lstat` of `host_path`.
    pub metadata: Metadata,
}

/// One entry of [`MergedView::walk`].
#[derive(Clone, Debug)]
pub struct MergedEntry {
    /// Relative to the walked subpath.
    pub rel: PathBuf,
    /// The visible copy on the host (in the topmost layer holding it).
    pub source: PathBuf,
    pub layer_index: usize,
    /// `lstat` of `source`.
    pub metadata: Metadata,
}

/// A read-only merged view of a layer stack, topmost layer first (the order
/// of overlayfs' `lowerdir=`).
///
/// The view never follows a symlink on the host: every path component is
/// looked up with `lstat` in each layer directory, and symlinks found in the
/// layers are resolved by the view itself, clamped at the view's root like a
/// chroot. So no symlink in a layer can make the view read a host file
/// outside the layers.
#[derive(Clone, Debug)]
pub struct MergedView {
    layers: Vec<PathBuf>,
}

/// A merged path: the visible copy first; for directories, every layer's
/// copy that overlayfs merges into it, in layer order.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    meta: Metadata,
    copies: Vec<(usize, PathBuf)>,
}

impl Node {
    fn layer_index(&self) -> usize {
        self.copies.first().map_or(0, |c| c.0)
    }

    fn host_path(&self) -> &Path {
        self.copies.first().map_or(Path::new(""), |c| c.1.as_path())
    }

    fn located(self) -> Located {
        let layer_index = self.layer_index();
        let host_path = self.host_path().to_path_buf();
        Located {
            layer_index,
            host_path,
            metadata: self.meta,
        }
    }
}

/// Overlayfs' lookup rule for one name, given the name's copies in the
/// layers that the parent directory merges (topmost first; `None` where a
/// layer lacks the name):
/// - a whiteout hides the name in it and every layer below;
/// - a non-directory on top is the result, and nothing below matters;
/// - directories merge downwards until an opaque directory, a whiteout or a
///   non-directory (which a directory above hides) ends the merge.
fn merge<I>(copies: I) -> Result<Option<Node>, Error>
where
    I: Iterator<Item = Result<Option<(usize, PathBuf, Metadata)>, Error>>,
{
    let mut node: Option<Node> = None;
    for copy in copies {
        let Some((layer, path, meta)) = copy? else {
            continue;
        };
        if is_whiteout(&meta) {
            break;
        }
        if !meta.is_dir() {
            if node.is_none() {
                node = Some(Node {
                    meta,
                    copies: vec![(layer, path)],
                });
            }
            break;
        }
        let opaque = is_opaque(&path)?;
        match &mut node {
            None => {
                node = Some(Node {
                    meta,
                    copies: vec![(layer, path)],
                })
            }
            Some(n) => n.copies.push((layer, path)),
        }
        if opaque {
            break;
        }
    }
    Ok(node)
}

fn lstat_opt(path: PathBuf) -> Result<Option<(PathBuf, Metadata)>, Error> {
    match fs::symlink_metadata(&path) {
        Ok(m) => Ok(Some((path, m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(n) => Some(Step::Name(n.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

impl MergedView {
    pub fn new(layers: Vec<PathBuf>) -> MergedView {
        MergedView { layers }
    }

    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    fn root(&self) -> Result<Option<Node>, Error> {
        let mut copies = Vec::with_capacity(self.layers.len());
        let mut top = None;
        // Every layer root must be a directory; a missing layer would
        // otherwise silently read as empty.
        for (i, layer) in self.layers.iter().enumerate() {
            let meta = fs::symlink_metadata(layer).map_err(io_at(layer))?;
            if !meta.is_dir() {
                return Err(Error::NotADirectory {
                    path: layer.clone(),
                });
            }
            // Like overlayfs, the roots of the layers always merge: an
            // opaque marker on a layer root is not consulted.
            top.get_or_insert(meta);
            copies.push((i, layer.clone()));
        }
        Ok(top.map(|meta| Node { meta, copies }))
    }

    fn child(&self, dir: &Node, name: &OsString) -> Result<Option<Node>, Error> {
        merge(
            dir.copies
                .iter()
                .map(|(layer, d)| Ok(lstat_opt(d.join(name))?.map(|(p, m)| (*layer, p, m)))),
        )
    }

    /// Resolves `path` inside the view. Symlinks in intermediate components
    /// are always followed (relative to the directory holding them, or to
    /// the view root if absolute; `..` stops at the view root); the last
    /// component's only if `follow_last`. A path through a non-directory
    /// resolves to nothing, as does a dangling symlink.
    fn resolve(&self, path: &Path, follow_last: bool) -> Result<Option<Node>, Error> {
        let Some(root) = self.root()? else {
            return Ok(None);
        };
        let mut stack: Vec<Node> = vec![root];
        let mut pending: VecDeque<Step> = steps(path).collect();
        let mut links = 0usize;
        while let Some(step) = pending.pop_front() {
            let Some(cur) = stack.last() else {
                return Ok(None);
            };
            if !cur.meta.is_dir() {
                // ENOTDIR: a path continues below a non-directory.
                return Ok(None);
            }
            match step {
                Step::Root => stack.truncate(1),
                Step::Parent => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                }
                Step::Name(name) => {
                    let Some(node) = self.child(cur, &name)? else {
                        return Ok(None);
                    };
                    let last = pending.is_empty();
                    if node.meta.file_type().is_symlink() && (follow_last || !last) {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(Error::SymlinkLoop {
                                path: path.to_path_buf(),
                            });
                        }
                        let target =
                            fs::read_link(node.host_path()).map_err(io_at(node.host_path()))?;
                        if target.as_os_str().is_empty() {
                            return Ok(None);
                        }
                        let mut expanded: VecDeque<Step> = steps(&target).collect();
                        expanded.extend(pending);
                        pending = expanded;
                        continue;
                    }
                    stack.push(node);
                }
            }
        }
        Ok(stack.pop())
    }

    fn resolve_dir(&self, subpath: &Path) -> Result<Node, Error> {
        match self.resolve(subpath, true)? {
            None => Err(Error::NotFound {
                path: subpath.to_path_buf(),
            }),
            Some(n) if !n.meta.is_dir() => Err(Error::NotADirectory {
                path: subpath.to_path_buf(),
            }),
            Some(n) => Ok(n),
        }
    }

    /// Resolve one path (absolute inside the view, e.g. `/etc/passwd`;
    /// relative paths are taken from the root) without following a symlink
    /// in the last component; intermediate symlinks are followed inside the
    /// view, clamped at its root, at most 40 of them. `None` if the path is
    /// absent, whited out, dangling, or runs through a non-directory.
    pub fn lookup(&self, path: &Path) -> Result<Option<Located>, Error> {
        Ok(self.resolve(path, false)?.map(Node::located))
    }

    /// Like [`lookup`](Self::lookup), but also follows a symlink in the last
    /// component.
    pub fn lookup_follow(&self, path: &Path) -> Result<Option<Located>, Error> {
        Ok(self.resolve(path, true)?.map(Node::located))
    }

    /// Reads a regular file, following symlinks (inside the view).
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let node = self.resolve(path, true)?.ok_or_else(|| Error::NotFound {
            path: path.to_path_buf(),
        })?;
        if !node.meta.is_file() {
            return Err(Error::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let host = node.host_path();
        let mut f = open_nofollow(host).map_err(io_at(host))?;
        let mut buf = Vec::with_capacity(usize::try_from(node.meta.len()).unwrap_or(0));
        f.read_to_end(&mut buf).map_err(io_at(host))?;
        Ok(buf)
    }

    fn walk_node(&self, top: &Node) -> Result<Vec<(PathBuf, Node)>, Error> {
        let mut out = Vec::new();
        let mut todo: Vec<(PathBuf, Node)> = vec![(PathBuf::new(), top.clone())];
        while let Some((rel, dir)) = todo.pop() {
            // name -> its copies in the layers this directory merges, in
            // layer order (the order we read them in).
            let mut names: BTreeMap<OsString, Vec<(usize, PathBuf, Metadata)>> = BTreeMap::new();
            for (layer, host_dir) in &dir.copies {
                for entry in fs::read_dir(host_dir).map_err(io_at(host_dir))? {
                    let entry = entry.map_err(io_at(host_dir))?;
                    let path = entry.path();
                    let meta = entry.metadata().map_err(io_at(&path))?;
                    names
                        .entry(entry.file_name())
                        .or_default()
                        .push((*layer, path, meta));
                }
            }
            for (name, copies) in names {
                let Some(node) = merge(copies.into_iter().map(|c| Ok(Some(c))))? else {
                    continue;
                };
                let child_rel = rel.join(&name);
                if node.meta.is_dir() {
                    todo.push((child_rel.clone(), node.clone()));
                }
                out.push((child_rel, node));
            }
        }
        out.sort_by(|a, b| path_key(&a.0).cmp(&path_key(&b.0)));
        Ok(out)
    }

    /// All entries under `subpath` of the merged tree (not `subpath`
    /// itself), honouring whiteouts and opaque directories, sorted by
    /// relative path bytes. Symlinks in `subpath` itself are followed.
    pub fn walk(&self, subpath: &Path) -> Result<Vec<MergedEntry>, Error> {
        let top = self.resolve_dir(subpath)?;
        Ok(self
            .walk_node(&top)?
            .into_iter()
            .map(|(rel, node)| MergedEntry {
                rel,
                source: node.host_path().to_path_buf(),
                layer_index: node.layer_index(),
                metadata: node.meta,
            })
            .collect())
    }

    /// The tree entries of `subpath`, as [`crate::hash_host_dir`] would list
    /// the same content on the host. Special files are skipped with a
    /// warning, as they are on the host.
    pub fn tree_entries(&self, subpath: &Path) -> Result<Vec<TreeEntry>, Error> {
        let walked = self.walk(subpath)?;
        let kept: Vec<&MergedEntry> = walked
            .iter()
            .filter(|e| {
                let ft = e.metadata.file_type();
                let plain = ft.is_dir() || ft.is_file() || ft.is_symlink();
                if !plain {
                    tracing::warn!(path = %e.source.display(), "skipping special file");
                }
                plain
            })
            .collect();
        parallel_try(&kept, |e| {
            let ft = e.metadata.file_type();
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_symlink() {
                EntryKind::Symlink {
                    target: fs::read_link(&e.source).map_err(io_at(&e.source))?,
                }
            } else {
                let mut f = open_nofollow(&e.source).map_err(io_at(&e.source))?;
                let (size, content) = hash_copy(&mut f, None).map_err(io_at(&e.source))?;
                EntryKind::File {
                    executable: is_executable(&e.metadata),
                    size,
                    content,
                }
            };
            Ok(TreeEntry {
                path: e.rel.clone(),
                kind,
            })
        })
    }

    /// The canonical digest of the merged subtree at `subpath`: equal to
    /// [`crate::HostTree::digest`] of a host directory with the same content.
    pub fn digest(&self, subpath: &Path) -> Result<[u8; 32], Error> {
        Ok(tree_digest(&self.tree_entries(subpath)?))
    }

    /// Materialize the merged subtree at `subpath` into `dest`, typically
    /// inside a new layer being built.
    ///
    /// Regular files are hardlinked from their layers (layers are immutable,
    /// so sharing inodes is safe and cheap); they are copied instead when the
    /// link fails with `EXDEV` (another filesystem) or `EMLINK` (link count
    /// limit). Directories, symlinks, FIFOs and device nodes are recreated
    /// with their mode, owner (when running as root) and timestamps; sockets
    /// are skipped with a warning. `dest` gets the mode, owner and times of
    /// the directory at `subpath`; it may already exist, and existing
    /// directories inside it are merged into, but any other existing path is
    /// an error. Whiteouts and opaque markers are not copied: the result is
    /// a plain tree. Extended attributes are not copied.
    pub fn link_into(&self, subpath: &Path, dest: &Path) -> Result<(), Error> {
        let top = self.resolve_dir(subpath)?;
        let entries = self.walk_node(&top)?;
        fs::create_dir_all(dest).map_err(io_at(dest))?;
        let opts = CopyOpts {
            owner: running_as_root(),
            mode_mask: 0o7777,
            fsync: false,
            hardlink: true,
            special_files: true,
        };
        build_tree(dest, &top, &entries, &opts)
    }
}

pub(crate) struct CopyOpts {
    /// Copy ownership (only possible as root).
    pub owner: bool,
    /// Permission bits kept from the source.
    pub mode_mask: u32,
    /// fsync every file and directory written.
    pub fsync: bool,
    /// Hardlink regular files instead of copying them.
    pub hardlink: bool,
    /// Recreate FIFOs and device nodes (else skip them with a warning).
    pub special_files: bool,
}

/// Recreates `entries` (from [`MergedView::walk_node`], sorted) below `dest`,
/// giving `dest` itself the metadata of `top`.
pub(crate) fn build_tree(
    dest: &Path,
    top: &Node,
    entries: &[(PathBuf, Node)],
    opts: &CopyOpts,
) -> Result<(), Error> {
    let mut dirs: Vec<(PathBuf, &Metadata)> = Vec::new();
    for (rel, node) in entries {
        if node.meta.is_dir() {
            let dst = dest.join(rel);
            create_work_dir(&dst, true)?;
            dirs.push((dst, &node.meta));
        }
    }
    let others: Vec<&(PathBuf, Node)> = entries.iter().filter(|(_, n)| !n.meta.is_dir()).collect();
    parallel_try(&others, |(rel, node)| {
        recreate_non_dir(node.host_path(), &dest.join(rel), &node.meta, opts)
    })?;
    // Children before parents: creating a child bumps the parent's mtime,
    // and a read-only parent must stay writable until its children exist.
    dirs.reverse();
    dirs.push((dest.to_path_buf(), &top.meta));
    for (dst, meta) in dirs {
        apply_metadata(&dst, meta, opts, false)?;
        if opts.fsync {
            crate::util::fsync_dir(&dst)?;
        }
    }
    Ok(())
}

fn recreate_non_dir(src: &Path, dst: &Path, meta: &Metadata, opts: &CopyOpts) -> Result<(), Error> {
    let ft = meta.file_type();
    if ft.is_file() {
        if opts.hardlink {
            match fs::hard_link(src, dst) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EMLINK)) => {}
                Err(e) => return Err(Error::io(dst, e)),
            }
        }
        copy_file(src, dst, meta, opts)
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_at(src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_at(dst))?;
        apply_metadata(dst, meta, opts, true)
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        if !opts.special_files {
            tracing::warn!(path = %src.display(), "skipping special file");
            return Ok(());
        }
        let kind = rustix::fs::FileType::from_raw_mode(meta.mode());
        let perm = rustix::fs::Mode::from_raw_mode(0o600);
        rustix::fs::mknodat(rustix::fs::CWD, dst, kind, perm, meta.rdev()).map_err(io_at(dst))?;
        apply_metadata(dst, meta, opts, false)
    } else {
        tracing::warn!(path = %src.display(), "skipping socket");
        Ok(())
    }
}

fn copy_file(src: &Path, dst: &Path, meta: &Metadata, opts: &CopyOpts) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = open_nofollow(src).map_err(io_at(src))?;
    let mut to = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(io_at(dst))?;
    io::copy(&mut from, &mut to).map_err(io_at(dst))?;
    if opts.owner {
        std::os::unix::fs::fchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(io_at(dst))?;
    }
    to.set_permissions(fs::Permissions::from_mode(meta.mode() & opts.mode_mask))
        .map_err(io_at(dst))?;
    filetime::set_file_handle_times(&to, Some(atime_of(meta)), Some(mtime_of(meta)))
        .map_err(io_at(dst))?;
    if opts.fsync {
        to.sync_all().map_err(io_at(dst))?;
    }
    Ok(())
}

/// Owner first: chown clears setuid/setgid bits, so the mode must come after.
fn apply_metadata(
    dst: &Path,
    meta: &Metadata,
    opts: &CopyOpts,
    symlink: bool,
) -> Result<(), Error> {
    if opts.owner {
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io_at(dst))?;
    }
    if symlink {
        // Symlink modes are meaningless on Linux and cannot be set.
        return filetime::set_symlink_file_times(dst, atime_of(meta), mtime_of(meta))
            .map_err(io_at(dst));
    }
    fs::set_permissions(
        dst,
        fs::Permissions::from_mode(meta.mode() & opts.mode_mask),
    )
    .map_err(io_at(dst))?;
    filetime::set_file_times(dst, atime_of(meta), mtime_of(meta)).map_err(io_at(dst))
}

impl MergedView {
    /// Resolves `subpath` to a directory and lists it; for exports.
    pub(crate) fn resolve_and_walk(
        &self,
        subpath: &Path,
    ) -> Result<(Node, Vec<(PathBuf, Node)>), Error> {
        let top = self.resolve_dir(subpath)?;
        let entries = self.walk_node(&top)?;
        Ok((top, entries))
    }

    /// Resolves `path` (following symlinks) to a regular file; for exports.
    pub(crate) fn resolve_file(&self, path: &Path) -> Result<Located, Error> {
        match self.resolve(path, true)? {
            None => Err(Error::NotFound {
                path: path.to_path_buf(),
            }),
            Some(n) if !n.meta.is_file() => Err(Error::NotAFile {
                path: path.to_path_buf(),
            }),
            Some(n) => Ok(n.located()),
        }
    }
}
