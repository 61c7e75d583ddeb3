mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{link, mkdir, write, write_exec};
use filetime::FileTime;
use kiln_fs::{hash_host_dir, EntryKind, Error, Filter};

fn sample(root: &Path) {
    write(&root.join("README"), "hello\n");
    write(&root.join("src/main.rs"), "fn main() {}\n");
    write_exec(&root.join("bin/run"), "#!/bin/sh\necho hi\n");
    link(&root.join("bin/latest"), "run");
    mkdir(&root.join("empty"));
}

fn digest(root: &Path) -> [u8; 32] {
    hash_host_dir(root, &Filter::default()).unwrap().digest
}

fn paths(root: &Path, filter: &Filter) -> Vec<String> {
    hash_host_dir(root, filter)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.path.to_str().unwrap().to_owned())
        .collect()
}

fn filter(include: &[&str], exclude: &[&str]) -> Filter {
    Filter {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn same_content_elsewhere_with_other_mtimes_hashes_equal() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("elsewhere/b"));
    sample(&a);
    sample(&b);
    for e in walkdir::WalkDir::new(&b) {
        let e = e.unwrap();
        let old = FileTime::from_unix_time(1_000_000, 0);
        filetime::set_symlink_file_times(e.path(), old, old).unwrap();
    }
    fs::set_permissions(&b, fs::Permissions::from_mode(0o700)).unwrap();
    let (ta, tb) = (
        hash_host_dir(&a, &Filter::default()).unwrap(),
        hash_host_dir(&b, &Filter::default()).unwrap(),
    );
    assert_eq!(ta.entries, tb.entries);
    assert_eq!(ta.digest, tb.digest);
    assert_eq!(ta.digest_hex().len(), 64);
    // A relative spelling of the root changes nothing either.
    let rel = Path::new(t.path()).join("elsewhere/../a");
    assert_eq!(digest(&rel), ta.digest);
}

#[test]
fn entries_are_sorted_and_typed() {
    let t = tempfile::tempdir().unwrap();
    sample(t.path());
    write(&t.path().join("src-extra"), "x");
    let tree = hash_host_dir(t.path(), &Filter::default()).unwrap();
    let names: Vec<_> = tree.entries.iter().map(|e| e.path.clone()).collect();
    let expected: Vec<PathBuf> = [
        "README",
        "bin",
        "bin/latest",
        "bin/run",
        "empty",
        "src",
        "src-extra",
        "src/main.rs",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(names, expected);
    assert_eq!(tree.root, fs::canonicalize(t.path()).unwrap());
    let by = |p: &str| {
        &tree
            .entries
            .iter()
            .find(|e| e.path == Path::new(p))
            .unwrap()
            .kind
    };
    assert_eq!(
        *by("bin/latest"),
        EntryKind::Symlink {
            target: "run".into()
        }
    );
    assert_eq!(*by("empty"), EntryKind::Dir);
    match by("bin/run") {
        EntryKind::File {
            executable,
            size,
            content,
        } => {
            assert!(executable);
            assert_eq!(*size, 18);
            assert_eq!(content, blake3::hash(b"#!/bin/sh\necho hi\n").as_bytes());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_content_change_changes_the_digest() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    sample(root);
    let base = digest(root);

    // One byte.
    write(&root.join("README"), "hellO\n");
    let changed = digest(root);
    assert_ne!(changed, base);
    write(&root.join("README"), "hello\n");
    assert_eq!(digest(root), base);

    // Rename.
    fs::rename(root.join("README"), root.join("README.md")).unwrap();
    assert_ne!(digest(root), base);
    fs::rename(root.join("README.md"), root.join("README")).unwrap();
    assert_eq!(digest(root), base);

    // Executable bit.
    fs::set_permissions(root.join("README"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(digest(root), base);
    fs::set_permissions(root.join("README"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(digest(root), base);
    // ...but not other permission bits.
    fs::set_permissions(root.join("README"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(digest(root), base);

    // Symlink target.
    fs::remove_file(root.join("bin/latest")).unwrap();
    link(&root.join("bin/latest"), "./run");
    assert_ne!(digest(root), base);
    fs::remove_file(root.join("bin/latest")).unwrap();
    link(&root.join("bin/latest"), "run");
    assert_eq!(digest(root), base);

    // An empty directory is content.
    fs::remove_dir(root.join("empty")).unwrap();
    assert_ne!(digest(root), base);
}

#[test]
fn gitignore_outside_a_repo_nested_and_kilnignore() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join(".gitignore"), "*.log\nbuild/\n");
    write(&root.join("a.log"), "log");
    write(&root.join("keep.txt"), "k");
    write(&root.join("build/out.o"), "o");
    write(&root.join("sub/.gitignore"), "secret.txt\n");
    write(&root.join("sub/secret.txt"), "s");
    write(&root.join("sub/deeper/secret.txt"), "s");
    write(&root.join("sub/deeper/b.log"), "log");
    write(&root.join("secret.txt"), "not ignored at the root");
    write(&root.join(".kilnignore"), "tmp/\n!important.log\n");
    write(&root.join("tmp/scratch"), "x");
    write(&root.join("important.log"), "re-included by .kilnignore");
    write(&root.join("other/.kilnignore"), "*.bak\n");
    write(&root.join("other/x.bak"), "x");
    write(&root.join("other/x.txt"), "x");
    write(&root.join(".env"), "hidden files count");
    assert_eq!(
        paths(root, &Filter::default()),
        [
            ".env",
            ".gitignore",
            ".kilnignore",
            "important.log",
            "keep.txt",
            "other",
            "other/.kilnignore",
            "other/x.txt",
            "secret.txt",
            "sub",
            "sub/.gitignore",
            "sub/deeper",
        ]
    );
    // Ignored files do not influence the digest.
    let before = digest(root);
    write(&root.join("build/out.o"), "changed");
    write(&root.join("a.log"), "changed");
    assert_eq!(digest(root), before);
}

#[test]
fn ignore_files_above_the_root_do_not_apply() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join(".gitignore"), "*.txt\n");
    write(&t.path().join("inner/a.txt"), "a");
    assert_eq!(
        paths(&t.path().join("inner"), &Filter::default()),
        ["a.txt"]
    );
}

#[test]
fn git_dir_is_always_skipped() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join(".git/HEAD"), "ref: refs/heads/main\n");
    write(&root.join(".git/config"), "");
    write(&root.join("sub/.git"), "gitdir: ../.git/modules/sub\n");
    write(&root.join("sub/file"), "f");
    write(&root.join(".github/ci.yml"), "on: push");
    assert_eq!(
        paths(root, &Filter::default()),
        [".github", ".github/ci.yml", "sub", "sub/file"]
    );
    // Even when include asks for it.
    assert_eq!(paths(root, &filter(&[".git"], &[])), Vec::<String>::new());
}

#[test]
fn filter_include_and_exclude() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(&root.join("Cargo.toml"), "[package]");
    write(&root.join("src/lib.rs"), "");
    write(&root.join("src/gen/big.tmp"), "");
    write(&root.join("src/gen/keep.rs"), "");
    write(&root.join("docs/guide.md"), "");
    write(&root.join("deep/a/b/c.rs"), "");
    write(&root.join("deep/a/b/c.md"), "");
    mkdir(&root.join("src/emptydir"));

    assert_eq!(
        paths(root, &filter(&["src", "/Cargo.toml"], &["*.tmp"])),
        [
            "Cargo.toml",
            "src",
            "src/emptydir",
            "src/gen",
            "src/gen/keep.rs",
            "src/lib.rs"
        ]
    );
    // A glob include keeps only the parents of what it matches.
    assert_eq!(
        paths(root, &filter(&["*.rs"], &[])),
        [
            "deep",
            "deep/a",
            "deep/a/b",
            "deep/a/b/c.rs",
            "src",
            "src/gen",
            "src/gen/keep.rs",
            "src/lib.rs"
        ]
    );
    // Excluding a directory drops everything under it.
    assert_eq!(
        paths(root, &filter(&[], &["src/", "deep/**/*.md"])),
        [
            "Cargo.toml",
            "deep",
            "deep/a",
            "deep/a/b",
            "deep/a/b/c.rs",
            "docs",
            "docs/guide.md"
        ]
    );
    // Include and .gitignore intersect.
    write(&root.join(".gitignore"), "lib.rs\n");
    assert_eq!(
        paths(root, &filter(&["src/*.rs"], &[])),
        Vec::<String>::new()
    );
}

#[test]
fn bad_filter_pattern_names_the_root() {
    let t = tempfile::tempdir().unwrap();
    let err = hash_host_dir(t.path(), &filter(&["src/[z-a]"], &[])).unwrap_err();
    assert!(matches!(err, Error::Filter { .. }), "{err:?}");
    assert!(
        err.to_string().contains(t.path().to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn symlinks_are_not_followed_and_special_files_skipped() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    write(&t.path().join("outside/secret"), "s");
    link(&root.join("out"), t.path().join("outside"));
    link(&root.join("dangling"), "nowhere");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert_eq!(paths(&root, &Filter::default()), ["dangling", "out"]);
}

#[test]
fn missing_root_and_file_root_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    let err = hash_host_dir(&missing, &Filter::default()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    write(&t.path().join("file"), "");
    let err = hash_host_dir(&t.path().join("file"), &Filter::default()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");
}

#[test]
fn many_files_hash_in_parallel_deterministically() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..300 {
        write(
            &t.path().join(format!("d{}/f{i}", i % 7)),
            format!("{i}").repeat(i),
        );
    }
    let a = hash_host_dir(t.path(), &Filter::default()).unwrap();
    let b = hash_host_dir(t.path(), &Filter::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.entries.len(), 307);
}

mod metadata_index {
    use std::fs;

    use kiln_fs::{hash_host_dir, hash_host_dir_indexed, Filter, MetadataIndex};

    fn age(path: &std::path::Path, secs_ago: i64) {
        let t = filetime::FileTime::from_unix_time(
            filetime::FileTime::now().unix_seconds() - secs_ago,
            0,
        );
        filetime::set_file_mtime(path, t).unwrap();
    }

    #[test]
    fn index_gives_the_same_digest_and_sees_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("a")).unwrap();
        for i in 0..50 {
            fs::write(root.join(format!("a/f{i}")), format!("content {i}")).unwrap();
            age(&root.join(format!("a/f{i}")), 100);
        }
        let index_path = dir.path().join("index");
        let plain = hash_host_dir(&root, &Filter::default()).unwrap();
        let mut index = MetadataIndex::load(&index_path);
        let first = hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        assert_eq!(first.digest, plain.digest);
        index.save(&index_path).unwrap();
        let mut index = MetadataIndex::load(&index_path);
        assert_eq!(index.len(), 50);
        let again = hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        assert_eq!(again.digest, plain.digest);

        // Same size, same mtime, different bytes: the ctime still moves, so
        // the index must not serve the old hash.
        let f = root.join("a/f7");
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&f).unwrap());
        fs::write(&f, "content X").unwrap();
        filetime::set_file_mtime(&f, mtime).unwrap();
        let changed = hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        assert_eq!(
            changed.digest,
            hash_host_dir(&root, &Filter::default()).unwrap().digest
        );
        assert_ne!(changed.digest, plain.digest);

        // A file replaced by another inode with identical metadata is re-read.
        let g = root.join("a/f8");
        let meta = fs::metadata(&g).unwrap();
        let tmp = root.join("a/.tmp");
        fs::write(&tmp, "content Y").unwrap();
        filetime::set_file_mtime(&tmp, filetime::FileTime::from_last_modification_time(&meta))
            .unwrap();
        fs::rename(&tmp, &g).unwrap();
        let replaced = hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        assert_eq!(
            replaced.digest,
            hash_host_dir(&root, &Filter::default()).unwrap().digest
        );
    }

    #[test]
    fn a_filtered_walk_records_only_the_files_it_includes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        for sub in ["keep", "skip"] {
            fs::create_dir_all(root.join(sub)).unwrap();
            for i in 0..20 {
                let f = root.join(format!("{sub}/f{i}"));
                fs::write(&f, format!("{sub} {i}")).unwrap();
                age(&f, 100);
            }
        }
        let only_keep = Filter {
            include: vec!["/keep/".into()],
            exclude: vec![],
        };
        let plain = hash_host_dir(&root, &only_keep).unwrap();
        let mut index = MetadataIndex::new();
        let first = hash_host_dir_indexed(&root, &only_keep, Some(&mut index)).unwrap();
        assert_eq!(first.digest, plain.digest);
        assert_eq!(index.len(), 20, "only the included files are hashed");
        let again = hash_host_dir_indexed(&root, &only_keep, Some(&mut index)).unwrap();
        assert_eq!(again.entries, plain.entries);

        // The same index then serves a walk of the whole tree.
        let whole = hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        assert_eq!(
            whole.digest,
            hash_host_dir(&root, &Filter::default()).unwrap().digest
        );
        assert_eq!(index.len(), 40);
    }

    #[test]
    fn racy_entries_are_read_again() {
        // A file modified in the same instant it was hashed keeps its mtime;
        // the index must not trust an entry that new.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(&root).unwrap();
        let f = root.join("hot");
        fs::write(&f, "one").unwrap();
        let mut index = MetadataIndex::new();
        hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&f).unwrap());
        fs::write(&f, "two").unwrap();
        filetime::set_file_mtime(&f, mtime).unwrap();
        let tree = hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        assert_eq!(
            tree.digest,
            hash_host_dir(&root, &Filter::default()).unwrap().digest
        );
    }

    #[test]
    fn damaged_index_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("x"), "x").unwrap();
        let index_path = dir.path().join("index");
        let mut index = MetadataIndex::new();
        hash_host_dir_indexed(&root, &Filter::default(), Some(&mut index)).unwrap();
        index.save(&index_path).unwrap();
        let mut bytes = fs::read(&index_path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&index_path, bytes).unwrap();
        assert!(MetadataIndex::load(&index_path).is_empty());
    }
}
