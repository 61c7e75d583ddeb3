//! Store behaviour on a real filesystem: verification, atomicity, sharing, pruning.

use std::fs;
use std::path::Path;
use std::time::Duration;

use kiln_store::{Digest, Error, PruneOptions, Store};

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

#[test]
fn blob_round_trip_and_dedupe() {
    let (_dir, store) = new_store();
    let d1 = store.put_blob(b"hello world").unwrap();
    let d2 = store.put_blob(b"hello world").unwrap();
    assert_eq!(d1, d2);
    assert_eq!(d1, Digest::of(b"hello world"));
    assert_eq!(store.read_blob(&d1).unwrap(), b"hello world");
    assert_eq!(store.blob_size(&d1), Some(11));
}

#[test]
fn a_staged_file_is_adopted_as_a_blob_and_repairs_a_damaged_one() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = new_store();
    let digest = Digest::of(b"step output");
    let stage = |bytes: &[u8]| {
        let path = store.staging_root().join("out-test");
        fs::write(&path, bytes).unwrap();
        path
    };
    store.adopt_blob(&stage(b"step output"), &digest).unwrap();
    assert_eq!(store.read_blob(&digest).unwrap(), b"step output");
    let mode = fs::metadata(store.blob_path(&digest))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // A blob damaged on disk is replaced by adopting the same bytes again.
    fs::write(store.blob_path(&digest), b"step outpuX").unwrap();
    store.adopt_blob(&stage(b"step output"), &digest).unwrap();
    assert_eq!(store.read_blob(&digest).unwrap(), b"step output");
    // Only files of the store's own staging area are taken.
    let outside = dir.path().join("elsewhere");
    fs::write(&outside, b"step output").unwrap();
    assert!(store.adopt_blob(&outside, &digest).is_err());
    assert!(outside.exists());
}

#[test]
fn a_torn_action_cache_record_is_a_miss() {
    let (_dir, store) = new_store();
    let key = "k".repeat(64);
    store.ac_put(&key, b"{\"layers\":[]}").unwrap();
    assert_eq!(
        store.ac_get(&key).unwrap().as_deref(),
        Some(&b"{\"layers\":[]}"[..])
    );
    // What a power cut can leave of an unsynced record: a prefix.
    let path = store.root().join("ac").join(&key);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert_eq!(store.ac_get(&key).unwrap(), None);
    assert!(!path.exists(), "the torn record is removed");
}

#[test]
fn mismatched_blob_is_not_stored() {
    let (_dir, store) = new_store();
    let claimed = Digest::of(b"the real bytes");
    let err = store
        .put_blob_from(&mut &b"other bytes"[..], Some(&claimed))
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!store.has_blob(&claimed));
    assert!(!store.has_blob(&Digest::of(b"other bytes")));
}

#[test]
fn corrupt_blob_is_detected_removed_and_refetchable() {
    let (_dir, store) = new_store();
    let digest = store.put_blob(b"precious layer bytes").unwrap();
    fs::write(store.blob_path(&digest), b"precious layer bytez").unwrap();
    let err = store.read_blob(&digest).unwrap_err();
    assert!(matches!(err, Error::CorruptBlob { .. }), "{err}");
    assert!(
        err.to_string().contains(digest.hex()),
        "error names the blob: {err}"
    );
    assert!(!store.has_blob(&digest), "corrupt blob must be removed");
    assert!(matches!(
        store.read_blob(&digest),
        Err(Error::MissingBlob(_))
    ));
    store
        .put_blob_from(&mut &b"precious layer bytes"[..], Some(&digest))
        .unwrap();
    assert_eq!(store.read_blob(&digest).unwrap(), b"precious layer bytes");
}

#[test]
fn action_cache_round_trip_and_torn_record_dropped() {
    let (dir, store) = new_store();
    let key = "a".repeat(64);
    assert_eq!(store.ac_get(&key).unwrap(), None);
    store.ac_put(&key, br#"{"layers":["x"]}"#).unwrap();
    assert_eq!(store.ac_get(&key).unwrap().unwrap(), br#"{"layers":["x"]}"#);
    // A record whose payload no longer matches its checksum is never trusted.
    let path = dir.path().join("store/ac").join(&key);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(store.ac_get(&key).unwrap(), None);
    assert!(!path.exists(), "corrupt record removed");
    // So is a truncated one.
    store.ac_put(&key, b"payload").unwrap();
    fs::write(&path, &fs::read(&path).unwrap()[..10]).unwrap();
    assert_eq!(store.ac_get(&key).unwrap(), None);
}

#[test]
fn cache_keys_and_names_cannot_escape_the_store() {
    let (_dir, store) = new_store();
    for bad in ["../x", "a/b", "", ".hidden"] {
        assert!(store.ac_put(bad, b"x").is_err(), "{bad:?}");
        assert!(store.volume_dir(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn layers_commit_atomically_and_first_writer_wins() {
    let (_dir, store) = new_store();
    let first = store.stage_dir().unwrap();
    fs::write(first.path().join("f"), "one").unwrap();
    let second = store.stage_dir().unwrap();
    fs::write(second.path().join("f"), "one").unwrap();
    let second_path = second.path().to_owned();
    let p1 = store.commit_layer(first, "layer1").unwrap();
    let p2 = store.commit_layer(second, "layer1").unwrap();
    assert_eq!(p1, p2);
    assert!(store.has_layer("layer1"));
    assert!(!second_path.exists(), "losing copy discarded");
    // An uncommitted staging dir disappears with its handle.
    let staged = store.stage_dir().unwrap();
    let staged_path = staged.path().to_owned();
    drop(staged);
    assert!(!staged_path.exists());
}

#[test]
fn two_handles_share_one_store_and_salt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                let staged = store.stage_dir().unwrap();
                fs::write(staged.path().join("f"), "same").unwrap();
                store.commit_layer(staged, "shared").unwrap();
                store
                    .put_blob(format!("blob {}", i % 2).as_bytes())
                    .unwrap();
                *store.secret_salt()
            })
        })
        .collect();
    let salts: Vec<[u8; 32]> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        salts.windows(2).all(|w| w[0] == w[1]),
        "all handles agree on the salt"
    );
    let store = Store::open(&root).unwrap();
    assert_eq!(store.secret_salt(), &salts[0]);
    assert_eq!(
        fs::read_to_string(store.layer_path("shared").join("f")).unwrap(),
        "same"
    );
}

#[test]
fn salt_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _store) = new_store();
    let mode = fs::metadata(dir.path().join("store/salt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn dead_sessions_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let staged = store.stage_dir().unwrap();
    fs::write(staged.path().join("half-written"), "x").unwrap();
    let leftover = staged.path().to_owned();
    // Simulate a kill: nothing runs Drop.
    std::mem::forget(staged);
    std::mem::forget(store);
    // Our own process still holds the forgotten session's flock through the
    // leaked fd, so release it the way process death would.
    let session = leftover.parent().unwrap().to_owned();
    for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            if target == session.join(".lock") {
                let fd: i32 = fd.file_name().to_str().unwrap().parse().unwrap();
                unsafe { libc_close(fd) };
            }
        }
    }
    let _store = Store::open(&root).unwrap();
    assert!(
        !leftover.exists(),
        "staging left by a dead process is removed"
    );
}

extern "C" {
    #[link_name = "close"]
    fn libc_close(fd: i32) -> i32;
}

#[test]
fn prune_by_size_removes_least_recently_used_first() {
    let (_dir, store) = new_store();
    let old = store.put_blob(&vec![1u8; 1000]).unwrap();
    let mid = store.put_blob(&vec![2u8; 1000]).unwrap();
    let new = store.put_blob(&vec![3u8; 1000]).unwrap();
    let stamp = |d: &Digest, secs_ago: u64| {
        let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
        filetime::set_file_mtime(store.blob_path(d), filetime::FileTime::from_system_time(t))
            .unwrap();
    };
    stamp(&old, 300);
    stamp(&mid, 200);
    stamp(&new, 100);
    // Reading `old` counts as a use and makes it the most recent.
    store.read_blob(&old).unwrap();
    let report = store
        .prune(&PruneOptions {
            keep_bytes: Some(2000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.removed.blobs.entries, 1);
    assert!(!store.has_blob(&mid), "least recently used removed");
    assert!(store.has_blob(&old) && store.has_blob(&new));
}

#[test]
fn prune_older_than_keeps_pinned_image_blobs_until_all() {
    let (_dir, store) = new_store();
    let pinned = store.put_blob(b"image layer").unwrap();
    let loose = store.put_blob(b"step output").unwrap();
    store.ac_put(&"b".repeat(64), b"result").unwrap();
    store
        .tag_image("busybox:test", &pinned, std::slice::from_ref(&pinned))
        .unwrap();
    let vol = store.volume_dir("cargo").unwrap();
    fs::write(vol.join("data"), "cached").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let report = store
        .prune(&PruneOptions {
            older_than: Some(Duration::from_millis(1)),
            ..Default::default()
        })
        .unwrap();
    assert!(!store.has_blob(&loose));
    assert!(store.has_blob(&pinned), "tagged image's blobs are kept");
    assert!(
        vol.join("data").exists(),
        "cache volumes only go with --all"
    );
    assert_eq!(report.removed.action_cache.entries, 1);
    store
        .prune(&PruneOptions {
            all: true,
            ..Default::default()
        })
        .unwrap();
    assert!(!store.has_blob(&pinned));
    assert!(store.list_tags().unwrap().is_empty());
    assert!(!vol.exists());
    assert_eq!(store.usage().unwrap().total_bytes(), 0);
}

#[test]
fn usage_counts_hardlinked_files_once() {
    let (_dir, store) = new_store();
    let a = store.stage_dir().unwrap();
    fs::write(a.path().join("big"), vec![0u8; 4096]).unwrap();
    let a = store.commit_layer(a, "a").unwrap();
    let b = store.stage_dir().unwrap();
    fs::hard_link(a.join("big"), b.path().join("big")).unwrap();
    store.commit_layer(b, "b").unwrap();
    let usage = store.usage().unwrap();
    assert_eq!(usage.layers.entries, 2);
    assert_eq!(usage.layers.bytes, 4096);
}

#[test]
fn image_tags_round_trip_with_odd_names() {
    let (_dir, store) = new_store();
    let d = store.put_blob(b"manifest").unwrap();
    let name = "localhost:5000/team/app:v1.2";
    store.tag_image(name, &d, std::slice::from_ref(&d)).unwrap();
    let tag = store.resolve_tag(name).unwrap().unwrap();
    assert_eq!(tag.manifest, d);
    assert_eq!(store.list_tags().unwrap()[0].name, name);
    assert!(store
        .resolve_tag("localhost:5000/team/app:v1")
        .unwrap()
        .is_none());
}

#[test]
fn prune_removes_content_objects_once_no_layer_links_them() {
    let (_dir, store) = new_store();
    let object = store.files_dir().join("abc");
    fs::write(&object, "shared bytes").unwrap();
    let layer = store.stage_dir().unwrap();
    fs::hard_link(&object, layer.path().join("f")).unwrap();
    store.commit_layer(layer, "h-1").unwrap();
    let orphan = store.files_dir().join("def");
    fs::write(&orphan, "nobody links me").unwrap();
    // An age limit nothing meets: only garbage goes.
    store
        .prune(&PruneOptions {
            older_than: Some(Duration::from_secs(3600)),
            ..Default::default()
        })
        .unwrap();
    assert!(object.exists(), "still linked by a layer");
    assert!(!orphan.exists(), "an object no layer links is garbage");
    store
        .prune(&PruneOptions {
            keep_bytes: Some(0),
            ..Default::default()
        })
        .unwrap();
    assert!(!store.has_layer("h-1"));
    assert!(
        !object.exists(),
        "its layer went, so it goes in the same prune"
    );
}

/// Runs `argv` as the unprivileged user `nobody`, as a local attacker would.
fn run_as_nobody(argv: &[&std::path::Path]) -> std::io::Result<std::process::Output> {
    // Not setpriv: it keeps capabilities until exec, so the path lookup
    // would still be root's.
    use std::os::unix::process::CommandExt;
    std::process::Command::new(argv[0])
        .args(&argv[1..])
        .uid(65534)
        .gid(65534)
        .output()
}

fn root_or_skip() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("KILN_REQUIRE_PRIVILEGED").is_none(),
            "this test needs root"
        );
        eprintln!("skipped: needs root");
    }
    root
}

/// A store inside a directory every user may traverse, as `/var/lib/kiln`
/// or `~/.local/share/kiln` are.
fn store_in_open_parent() -> (tempfile::TempDir, Store) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

#[test]
fn a_setuid_binary_in_a_layer_gives_other_users_nothing() {
    // Needs root: the binary must be owned by root, and run as another user.
    use std::os::unix::fs::PermissionsExt;
    if !root_or_skip() {
        return;
    }
    let (_dir, store) = store_in_open_parent();
    let staged = store.stage_dir().unwrap();
    let id = staged.path().join("id");
    fs::copy("/usr/bin/id", &id).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let layer = store.commit_layer(staged, "setuid-layer").unwrap();
    let binary = layer.join("id");
    assert_eq!(
        fs::metadata(&binary).unwrap().permissions().mode() & 0o7777,
        0o4755,
        "containers still see the image's setuid bit"
    );
    match run_as_nobody(&[&binary, Path::new("-u")]) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        Ok(out) => panic!(
            "another user ran a setuid binary from the store: euid {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

#[test]
fn a_store_left_open_by_an_older_kiln_is_closed_on_open() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = store_in_open_parent();
    let root = store.root().to_owned();
    assert_eq!(
        fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    drop(store);
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let _store = Store::open(dir.path().join("store")).unwrap();
    assert_eq!(
        fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn private_host_files_in_the_store_are_unreadable_to_others() {
    if !root_or_skip() {
        return;
    }
    let (_dir, store) = store_in_open_parent();
    // files/ objects are normalised to 0644 (their mode is shared by every
    // layer that links them); the closed root is what keeps them private.
    let object = store.files_dir().join("object");
    fs::write(&object, b"-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
    let out = run_as_nobody(&[Path::new("/bin/cat"), &object]).unwrap();
    assert!(
        !out.status.success(),
        "another user read {}",
        object.display()
    );
}
