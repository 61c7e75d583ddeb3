//! Disk usage and least-recently-used pruning.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::{remove_tree, Digest, Store};

/// Size of one kind of entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindUsage {
    pub entries: u64,
    pub bytes: u64,
}

/// Size of the store by kind. Hard-linked files are counted once, under the
/// first kind that holds them, so the total is what the disk really holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub blobs: KindUsage,
    pub layers: KindUsage,
    /// Content objects behind host-directory layers.
    pub files: KindUsage,
    pub action_cache: KindUsage,
    pub volumes: KindUsage,
}

impl Usage {
    pub fn total_bytes(&self) -> u64 {
        self.blobs.bytes
            + self.layers.bytes
            + self.files.bytes
            + self.action_cache.bytes
            + self.volumes.bytes
    }
}

#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Remove least-recently-used entries until the store holds at most this.
    pub keep_bytes: Option<u64>,
    /// Remove entries not used for this long.
    pub older_than: Option<Duration>,
    /// Remove everything: cached results, layers, blobs, image tags and cache volumes.
    pub all: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub removed: Usage,
    pub kept_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Blob,
    Layer,
    File,
    ActionCache,
    Volume,
}

struct Entry {
    kind: Kind,
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    pinned: bool,
}

impl Store {
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for entry in self.entries(&HashSet::new())? {
            let slot = usage_slot(&mut usage, entry.kind);
            slot.entries += 1;
            slot.bytes += entry.bytes;
        }
        Ok(usage)
    }

    /// Removes entries, least recently used first. Waits for other kiln
    /// processes using the store to finish, since their running steps may
    /// depend on entries that would otherwise be removed under them.
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let lock_path = self.root.join("lock");
        if !self.store_lock.try_convert_exclusive(&lock_path)? {
            tracing::info!("waiting for other kiln processes using the store to finish");
            self.store_lock.convert(true, &lock_path)?;
        }
        let result = self.prune_locked(options);
        self.store_lock.convert(false, &lock_path)?;
        result
    }

    fn prune_locked(&self, options: &PruneOptions) -> Result<PruneReport> {
        let pinned: HashSet<Digest> = if options.all {
            HashSet::new()
        } else {
            self.list_tags()?
                .into_iter()
                .flat_map(|tag| tag.blobs.into_iter().chain([tag.manifest]))
                .collect()
        };
        // Layers first, so content objects they held become unreferenced
        // and go in the same prune.
        let mut entries = self.entries(&pinned)?;
        entries.sort_by_key(|e| (e.kind == Kind::File, e.last_used));
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let now = SystemTime::now();
        let mut report = PruneReport::default();
        for entry in entries {
            let expired = options.older_than.is_some_and(|age| {
                now.duration_since(entry.last_used)
                    .is_ok_and(|idle| idle >= age)
            });
            let over_budget = options.keep_bytes.is_some_and(|keep| total > keep);
            // A content object no layer links to any more is garbage
            // whatever its age; one still linked goes only with its layers.
            let eligible = options.all
                || match entry.kind {
                    // Decided below, at removal time: layers earlier in
                    // this pass may just have released it.
                    Kind::File => true,
                    Kind::Volume => false,
                    _ => !entry.pinned && (expired || over_budget),
                };
            if !eligible {
                continue;
            }
            if entry.kind == Kind::File && !options.all && !is_unreferenced(&entry.path) {
                continue;
            }
            remove_tree(&entry.path);
            total = total.saturating_sub(entry.bytes);
            let slot = usage_slot(&mut report.removed, entry.kind);
            slot.entries += 1;
            slot.bytes += entry.bytes;
        }
        if options.all {
            for tag in self.list_tags()? {
                self.untag_image(&tag.name)?;
            }
        }
        report.kept_bytes = total;
        Ok(report)
    }

    fn entries(&self, pinned: &HashSet<Digest>) -> Result<Vec<Entry>> {
        let mut seen_inodes = HashSet::new();
        let mut entries = Vec::new();
        for (kind, dir) in [
            (Kind::ActionCache, "ac"),
            (Kind::Blob, "blobs/sha256"),
            (Kind::Layer, "layers"),
            (Kind::File, "files"),
            (Kind::ActionCache, "index"),
            (Kind::Volume, "volumes"),
        ] {
            let dir = self.root.join(dir);
            let Ok(list) = fs::read_dir(&dir) else {
                continue;
            };
            for item in list.flatten() {
                let path = item.path();
                let name = item.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                let is_pinned = kind == Kind::Blob
                    && format!("sha256:{}", name.to_string_lossy())
                        .parse::<Digest>()
                        .is_ok_and(|d| pinned.contains(&d));
                entries.push(Entry {
                    kind,
                    bytes: tree_bytes(&path, &mut seen_inodes),
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                    pinned: is_pinned,
                });
            }
        }
        Ok(entries)
    }
}

fn is_unreferenced(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.nlink() <= 1)
}

fn usage_slot(usage: &mut Usage, kind: Kind) -> &mut KindUsage {
    match kind {
        Kind::Blob => &mut usage.blobs,
        Kind::Layer => &mut usage.layers,
        Kind::File => &mut usage.files,
        Kind::ActionCache => &mut usage.action_cache,
        Kind::Volume => &mut usage.volumes,
    }
}

fn tree_bytes(path: &Path, seen_inodes: &mut HashSet<(u64, u64)>) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .filter(|m| m.nlink() == 1 || seen_inodes.insert((m.dev(), m.ino())))
        .map(|m| m.len())
        .sum()
}
