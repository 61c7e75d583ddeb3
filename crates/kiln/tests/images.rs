//! Images in and out through the `kiln` binary, against a real registry
//! (Debian's docker-registry on 127.0.0.1) with skopeo putting fixtures in
//! and checking what kiln pushed: pulls, `kiln.lock`, `--locked`,
//! `publish`, push/pull round trips, `image save` and air-gapped import.
//! Needs root and runc (containers), docker-registry and skopeo.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{privileged, text, Env};
use kiln_testkit::{busybox_config, busybox_layer, Compression, ImageFixture, LayerBuilder};

/// A registry on loopback, or `None` (skipping) when the tools are missing.
fn registry(auth: Option<(&str, &str)>) -> Option<kiln_testkit::TestRegistry> {
    if !privileged() {
        return None;
    }
    kiln_testkit::TestRegistry::start(auth)
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `fixture` as an OCI layout under `dir` and copies it to
/// `docker://TARGET`.
fn put(dir: &Path, fixture: &ImageFixture, target: &str) {
    let layout = dir.join(format!("layout-{}", target.replace(['/', ':'], "_")));
    kiln_testkit::write_oci_layout(&layout, fixture);
    let source = format!("oci:{}", layout.display());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &source,
        &format!("docker://{target}"),
    ]);
}

/// The manifest digest the registry serves for `reference`.
fn remote_digest(reference: &str) -> String {
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ]);
    raw.trim().to_owned()
}

/// busybox, and busybox with /marker holding `marker`.
fn busybox() -> ImageFixture {
    ImageFixture::new(busybox_config(), None)
        .layer(busybox_layer(Compression::None), Compression::Gzip)
}

fn busybox_marked(marker: &str) -> ImageFixture {
    busybox().layer(
        LayerBuilder::new().file("marker", marker, 0o644).tar(),
        Compression::Gzip,
    )
}

fn ok(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn failed(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "expected a failure\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stderr
}

/// The same work directory with another store: a second machine.
fn with_store(env: &Env, store: &Path, args: &[&str]) -> std::process::Output {
    env.cmd(args).env("KILN_STORE", store).output().unwrap()
}

#[test]
fn tags_are_pulled_pinned_by_kiln_lock_and_held_to_by_locked_runs() {
    let Some(reg) = registry(None) else { return };
    let env = Env::empty();
    let host = reg.host();
    let tag = format!("{host}/test/busybox:1");
    put(env.dir.path(), &busybox(), &tag);
    let v1 = remote_digest(&tag);
    let star = format!(
        r#"
def show() -> str:
    """Prints the marker file, or none."""
    return container("{tag}").with_exec(["sh", "-c", "cat /marker 2>/dev/null || echo none"]).stdout()
"#
    );
    let module = env.module("mod", &[("kiln.star", &star)]);
    let m = module.to_str().unwrap();

    // An empty store: the image is pulled, with a line per blob fetched.
    let out = env.kiln(&["call", "-m", m, "show", "--progress", "plain"]);
    assert_eq!(ok(&out).trim(), "none");
    let progress = text(&out).1;
    assert!(progress.contains(&format!("pull {tag}")), "{progress}");
    assert!(progress.contains("fetched "), "{progress}");
    let images = ok(&env.kiln(&["image", "ls", "--json"]));
    assert!(images.contains(&v1), "{images}");

    // `--locked` needs a lock file.
    let err = failed(&env.kiln(&["call", "--locked", "-m", m, "show"]));
    assert!(
        err.contains("no ") && err.contains("kiln.lock") && err.contains("kiln lock"),
        "{err}"
    );

    // kiln lock pins the tag; a second run changes nothing.
    ok(&env.kiln(&["lock", "-m", m]));
    let lock_path = module.join("kiln.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    assert!(lock.contains(&format!("\"{tag}\" = \"{v1}\"")), "{lock}");
    let again = env.kiln(&["lock", "-m", m]);
    assert!(text(&again).1.contains("up to date"), "{}", text(&again).1);
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);

    // The tag moves on the registry; the pin holds, even on a machine that
    // never saw the image (it is pulled by digest).
    put(env.dir.path(), &busybox_marked("v2"), &tag);
    let v2 = remote_digest(&tag);
    assert_ne!(v1, v2);
    let other_store = env.path("store-2");
    let out = with_store(&env, &other_store, &["call", "--locked", "-m", m, "show"]);
    assert_eq!(ok(&out).trim(), "none");

    // Moving the pin on purpose.
    let out = env.kiln(&["lock", "-m", m, "--update", &tag]);
    ok(&out);
    assert!(
        text(&out).1.contains(&format!("~ {tag} {v1} -> {v2}")),
        "{}",
        text(&out).1
    );
    assert_eq!(
        ok(&env.kiln(&["call", "--locked", "-m", m, "show"])).trim(),
        "v2"
    );

    // A new image, used without --locked, is added to the lock.
    let other = format!("{host}/test/other:1");
    put(env.dir.path(), &busybox_marked("other"), &other);
    let with_other = format!(
        "{star}\ndef other() -> str:\n    \"\"\"The other image.\"\"\"\n    return container(\"{other}\").with_exec([\"cat\", \"/marker\"]).stdout()\n"
    );
    std::fs::write(module.join("kiln.star"), &with_other).unwrap();
    // --locked refuses: the pipeline uses a tag the lock does not pin.
    let err = failed(&env.kiln(&["call", "--locked", "-m", m, "show"]));
    assert!(err.contains(&format!("not pinned: {other}")), "{err}");
    let out = env.kiln(&["call", "-m", m, "other"]);
    assert_eq!(ok(&out).trim(), "other");
    assert!(
        text(&out).1.contains(&format!("pinned {other}")),
        "{}",
        text(&out).1
    );
    assert!(std::fs::read_to_string(&lock_path)
        .unwrap()
        .contains(&other));

    // The function goes away; its pin is now stale.
    std::fs::write(module.join("kiln.star"), &star).unwrap();
    let err = failed(&env.kiln(&["call", "--locked", "-m", m, "show"]));
    assert!(
        err.contains(&format!("pinned but no longer used: {other}")),
        "{err}"
    );
    let out = env.kiln(&["lock", "-m", m]);
    assert!(
        text(&out).1.contains(&format!("- {other}")),
        "{}",
        text(&out).1
    );
    ok(&env.kiln(&["call", "--locked", "-m", m, "show"]));
}

#[test]
fn a_digest_that_does_not_exist_is_an_error_that_names_it() {
    let Some(reg) = registry(None) else { return };
    let env = Env::empty();
    let missing = format!("{}/test/none@sha256:{}", reg.host(), "ab".repeat(32));
    let out = env.kiln(&["image", "pull", &missing]);
    let err = failed(&out);
    assert!(err.contains("test/none"), "{err}");
}

fn site_module(env: &Env, host: &str) -> PathBuf {
    let star = format!(
        r#"
def _site(source: Directory, token: Secret) -> Container:
    return (
        container("{host}/base/busybox:1")
        .with_directory("/app", source)
        .with_secret_variable("TOKEN", token)
        .with_exec(["sh", "-c", "cat /app/a.txt /app/b.txt > /app/all && test -n \"$TOKEN\""])
        .with_env_variable("MODE", "prod")
        .with_workdir("/app")
        .with_entrypoint(["cat"])
    )

def ship(source: Directory, token: Secret) -> str:
    """Builds the site and publishes it."""
    return _site(source, token).publish("{host}/app/site:1")

def image(source: Directory, token: Secret) -> Container:
    """Builds the site."""
    return _site(source, token)
"#
    );
    let module = env.module("site", &[("kiln.star", &star)]);
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/a.txt"), "alpha\n").unwrap();
    std::fs::write(env.path("src/b.txt"), "beta\n").unwrap();
    module
}

const TOKEN: &str = "s3cr3t-publish-token-value";

#[test]
fn publish_gives_one_digest_everywhere_and_images_travel_without_a_network() {
    let Some(reg) = registry(None) else { return };
    let env = Env::empty();
    let host = reg.host();
    put(
        env.dir.path(),
        &busybox(),
        &format!("{host}/base/busybox:1"),
    );
    let module = site_module(&env, &host);
    let m = module.to_str().unwrap();
    let call = |store: &Path, extra_env: &[(&str, &str)]| {
        let mut cmd = env.cmd(&[
            "call",
            "-m",
            m,
            "ship",
            "--source",
            "src",
            "--token",
            "env:TOKEN",
        ]);
        cmd.env("KILN_STORE", store).env("TOKEN", TOKEN);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };

    let out = call(&env.store(), &[]);
    let first = ok(&out).trim().to_owned();
    assert!(first.starts_with("sha256:"), "{first}");
    let site = format!("{host}/app/site:1");
    assert_eq!(remote_digest(&site), first);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(TOKEN));

    // Another machine: a fresh store, the sources rewritten (new mtimes and
    // inodes) with the same bytes. The same digest.
    for name in ["a.txt", "b.txt"] {
        let path = env.path(&format!("src/{name}"));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let second = ok(&call(&env.path("store-2"), &[])).trim().to_owned();
    assert_eq!(second, first, "publish must be reproducible");
    // SOURCE_DATE_EPOCH stamps the layers: another digest.
    let stamped = ok(&call(
        &env.path("store-3"),
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    ))
    .trim()
    .to_owned();
    assert_ne!(stamped, first);
    // Put the unstamped image back for what follows.
    assert_eq!(ok(&call(&env.store(), &[])).trim(), first);

    // The pushed configuration: env, workdir, entrypoint; never the secret.
    let config = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        &format!("docker://{site}"),
    ]);
    assert!(config.contains("MODE=prod"), "{config}");
    assert!(config.contains("\"WorkingDir\": \"/app\""), "{config}");
    assert!(
        !config.contains("TOKEN") && !config.contains(TOKEN),
        "{config}"
    );

    // Registry -> kiln -> registry keeps the digest.
    let store_4 = env.path("store-4");
    ok(&with_store(&env, &store_4, &["image", "pull", &site]));
    let copy = format!("{host}/copy/site:1");
    let out = with_store(&env, &store_4, &["image", "push", &site, &copy]);
    assert!(ok(&out).contains(&first));
    assert_eq!(remote_digest(&copy), first);

    // Air-gapped: save, then import on a store that never saw a registry.
    let tar = env.path("site.tar");
    ok(&with_store(
        &env,
        &store_4,
        &["image", "save", &site, "-o", tar.to_str().unwrap()],
    ));
    let archive = format!("oci-archive:{}", tar.display());
    let inspected = skopeo(&["inspect", "--format", "{{.Digest}}", &archive]);
    assert_eq!(inspected.trim(), first);
    skopeo(&["inspect", &format!("docker-archive:{}", tar.display())]);
    let offline = env.path("store-offline");
    ok(&with_store(
        &env,
        &offline,
        &["image", "import", tar.to_str().unwrap()],
    ));
    let listed = ok(&with_store(&env, &offline, &["image", "ls", "--json"]));
    assert!(listed.contains(&first), "{listed}");
    let out = with_store(
        &env,
        &offline,
        &["--offline", "exec", &site, "--", "cat", "/app/all"],
    );
    assert_eq!(ok(&out), "alpha\nbeta\n");
    // No layer of the saved image holds the secret.
    let bytes = std::fs::read(&tar).unwrap();
    assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
}

#[test]
fn a_returned_container_is_written_as_an_image_tarball() {
    let Some(reg) = registry(None) else { return };
    let env = Env::empty();
    let host = reg.host();
    put(
        env.dir.path(),
        &busybox(),
        &format!("{host}/base/busybox:1"),
    );
    let module = site_module(&env, &host);
    let m = module.to_str().unwrap();
    let out = env
        .cmd(&[
            "call",
            "-m",
            m,
            "image",
            "--source",
            "src",
            "--token",
            "env:TOKEN",
            "-o",
            "site.tar",
        ])
        .env("TOKEN", TOKEN)
        .output()
        .unwrap();
    ok(&out);
    let store = env.path("store-other");
    let imported = ok(&with_store(&env, &store, &["image", "import", "site.tar"]));
    assert!(imported.contains("image:latest"), "{imported}");
    let out = with_store(
        &env,
        &store,
        &["--offline", "exec", "image:latest", "--", "cat", "/app/all"],
    );
    assert_eq!(ok(&out), "alpha\nbeta\n");
}

#[test]
fn login_checks_credentials_and_pulls_use_them() {
    let Some(reg) = registry(Some(("kiln", "right-password"))) else {
        return;
    };
    let env = Env::empty();
    let host = reg.host();
    let tag = format!("{host}/private/busybox:1");
    let layout = env.path("layout");
    kiln_testkit::write_oci_layout(&layout, &busybox());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-creds",
        "kiln:right-password",
        &format!("oci:{}", layout.display()),
        &format!("docker://{tag}"),
    ]);
    let config_dir = env.path("kiln-config");
    let kiln = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = env
            .cmd(args)
            .env("KILN_CONFIG_DIR", &config_dir)
            .env("DOCKER_CONFIG", env.path("no-docker"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };

    let err = failed(&kiln(&["image", "pull", &tag], ""));
    assert!(err.contains("kiln registry login"), "{err}");

    let out = kiln(
        &["registry", "login", &host, "-u", "kiln", "--password-stdin"],
        "wrong-password\n",
    );
    let err = failed(&out);
    assert!(!err.contains("wrong-password"), "{err}");
    assert!(!config_dir.join("auth.json").exists());

    ok(&kiln(
        &["registry", "login", &host, "-u", "kiln", "--password-stdin"],
        "right-password\n",
    ));
    let auth = config_dir.join("auth.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&auth).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = kiln(&["image", "pull", &tag], "");
    ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("right-password"));

    ok(&kiln(&["registry", "logout", &host], ""));
    assert!(!std::fs::read_to_string(&auth)
        .unwrap_or_default()
        .contains(&host));
}

#[test]
fn offline_forbids_pulling_and_says_how_to_import() {
    let env = Env::empty();
    let err = failed(&env.kiln(&["--offline", "image", "pull", "alpine:3.20"]));
    assert!(
        err.contains("--offline forbids pulling docker.io/library/alpine:3.20"),
        "{err}"
    );
    assert!(err.contains("kiln image import"), "{err}");
}

#[test]
fn a_pulled_images_layers_together_are_held_to_the_image_limit() {
    if !privileged() {
        return;
    }
    // busybox (about 2 MB unpacked) plus a 3 MB layer: each under a 4 MB
    // image limit, together over it.
    let env = Env::empty();
    let extra = kiln_testkit::LayerBuilder::new().file("data/blob", vec![7u8; 3 << 20], 0o644);
    let fixture = kiln_testkit::busybox_fixture(kiln_testkit::Compression::Gzip)
        .layer(extra.tar(), kiln_testkit::Compression::Gzip);
    let layout = env.path("two-layers");
    kiln_testkit::write_oci_layout(&layout, &fixture);
    let imported = env.kiln(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "big:2",
    ]);
    assert!(imported.status.success(), "{:?}", text(&imported));

    let refused = env
        .cmd(&["exec", "big:2", "--", "true"])
        .env("KILN_MAX_IMAGE_BYTES", "4000000")
        .output()
        .unwrap();
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("KILN_MAX_IMAGE_BYTES"), "{stderr}");

    let ran = env.kiln(&["exec", "big:2", "--", "cat", "/data/blob"]);
    assert!(ran.status.success(), "{:?}", text(&ran));
    assert_eq!(ran.stdout.len(), 3 << 20);
}

#[test]
fn an_opaque_layer_root_hides_every_layer_below_it_in_a_step() {
    if !privileged() {
        return;
    }
    // Base: busybox plus /old. Top: an opaque root marker, then busybox
    // again plus /new. Docker shows /new only; so must a step.
    let env = Env::empty();
    let rootfs = env.path("rootfs");
    kiln_testkit::busybox_rootfs(&rootfs);
    let base = kiln_testkit::layer_from_dir(&rootfs).file("old", b"old", 0o644);
    let top = kiln_testkit::layer_from_dir(&rootfs)
        .opaque("")
        .file("new", b"new", 0o644);
    let fixture = ImageFixture::new(busybox_config(), None)
        .layer(base.tar(), Compression::Gzip)
        .layer(top.tar(), Compression::Gzip);
    let layout = env.path("opaque");
    kiln_testkit::write_oci_layout(&layout, &fixture);
    let imported = env.kiln(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "opaque:1",
    ]);
    assert!(imported.status.success(), "{:?}", text(&imported));
    let ls = env.kiln(&[
        "exec",
        "opaque:1",
        "--",
        "sh",
        "-c",
        "ls /new /old 2>&1; true",
    ]);
    let (stdout, stderr) = text(&ls);
    assert!(ls.status.success(), "{stderr}");
    assert!(stdout.contains("/new"), "{stdout}");
    assert!(
        stdout.contains("/old: No such file"),
        "the lower layer shows through: {stdout}"
    );
}

#[test]
fn a_rootfs_with_dev_entries_imports_and_runs_without_them() {
    if !privileged() {
        return;
    }
    // What `tar -C rootfs -c .` of debootstrap output holds under dev/.
    let env = Env::empty();
    let rootfs = env.path("rootfs");
    kiln_testkit::busybox_rootfs(&rootfs);
    let layer = kiln_testkit::layer_from_dir(&rootfs)
        .dir("dev", 0o755)
        .char_device("dev/null", 1, 3)
        .char_device("dev/mem", 1, 1)
        .block_device("dev/sda", 8, 0);
    let fixture = ImageFixture::new(busybox_config(), None).layer(layer.tar(), Compression::Gzip);
    let layout = env.path("with-dev");
    kiln_testkit::write_oci_layout(&layout, &fixture);
    let imported = env.kiln(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--tag",
        "withdev:1",
    ]);
    assert!(imported.status.success(), "{:?}", text(&imported));
    let ran = env.kiln(&[
        "exec",
        "withdev:1",
        "--",
        "sh",
        "-c",
        "echo hi > /dev/null && ls /dev/sda /dev/mem 2>&1; true",
    ]);
    let (stdout, stderr) = text(&ran);
    assert!(ran.status.success(), "{stderr}");
    assert!(stdout.contains("/dev/sda: No such file"), "{stdout}");
    assert!(stdout.contains("/dev/mem: No such file"), "{stdout}");
    assert!(
        stderr.contains("left out 3 device node(s)"),
        "said once, at unpack: {stderr}"
    );
}
