//! Credentials against a real registry with htpasswd (basic) auth.
//!
//! Needs docker-registry and skopeo (and htpasswd from apache2-utils for
//! auth): skipped with a message when they are missing, unless
//! KILN_REQUIRE_REGISTRY is set (scripts/deps.sh installs them).

mod common;

use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;
use common::{options, put_busybox};
use kiln_oci::Reference;
use kiln_registry::{blocking, logout, Error};
use kiln_store::Store;
use kiln_testkit::TestRegistry;

const USER: &str = "kiln-user";
const PASSWORD: &str = "s3cret-Pa55word-xyzzy";
const WRONG: &str = "wrong-Pa55word-plugh";

#[test]
fn credentials_come_from_docker_config_or_login_and_never_show() {
    let Some(registry) = TestRegistry::start(Some((USER, PASSWORD))) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = put_busybox(&registry, dir.path(), "private/busybox:1");
    let host = registry.host();
    let busybox: Reference = format!("{host}/private/busybox:1").parse().unwrap();
    let opts = options(dir.path());
    let kiln_file = opts.credentials_file.clone().unwrap();
    let mut errors = Vec::new();

    // Anonymous: refused, with the way out named.
    let store = Store::open(dir.path().join("store")).unwrap();
    let err = blocking::pull(&store, &busybox, &opts, &|_| {}).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(
        text.contains(&format!("kiln registry login {host}")),
        "{text}"
    );
    assert!(store
        .resolve_tag(&busybox.name_in_store())
        .unwrap()
        .is_none());
    errors.push(format!("{text} {err:?}"));

    // Docker's config.json, as `docker login` writes it.
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker_dir.join("config.json"),
        serde_json::to_vec(&serde_json::json!({"auths": {host.clone(): {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    let with_docker = kiln_registry::RegistryOptions {
        docker_config_file: Some(docker_dir.join("config.json")),
        ..opts.clone()
    };
    let pulled = blocking::pull(&store, &busybox, &with_docker, &|_| {}).unwrap();
    assert_eq!(pulled.manifest, image.manifest);

    // Docker's file with a wrong password: refused, naming the user and file.
    std::fs::write(
        docker_dir.join("config.json"),
        serde_json::to_vec(&serde_json::json!({"auths": {format!("https://{host}"): {
            "username": USER, "password": WRONG}}}))
        .unwrap(),
    )
    .unwrap();
    let err = blocking::resolve(&busybox, &with_docker).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(
        text.contains(USER) && text.contains("config.json"),
        "{text}"
    );
    errors.push(format!("{text} {err:?}"));

    // login with the wrong password: refused, nothing saved.
    let err = blocking::login(&host, USER, WRONG, &opts).unwrap_err();
    assert!(matches!(err, Error::LoginRejected { .. }), "{err}");
    assert!(err.to_string().contains(USER), "{err}");
    assert!(!kiln_file.exists(), "a failed login must save nothing");
    errors.push(format!("{err} {err:?}"));

    // login with the right one: a 0600 file, then pulls work.
    blocking::login(&host, USER, PASSWORD, &opts).unwrap();
    let mode = std::fs::metadata(&kiln_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let fresh = Store::open(dir.path().join("store2")).unwrap();
    let pulled = blocking::pull(&fresh, &busybox, &opts, &|_| {}).unwrap();
    assert_eq!(pulled.manifest, image.manifest);
    kiln_oci::load_image(&fresh, &busybox.to_string()).unwrap();
    // kiln's file wins over Docker's (which still has the wrong password).
    assert_eq!(
        blocking::resolve(&busybox, &with_docker).unwrap(),
        image.manifest
    );

    // Pushing with the saved credentials works too.
    let copy: Reference = format!("{host}/private/copy:1").parse().unwrap();
    blocking::push(&fresh, &image.manifest, &copy, &opts).unwrap();
    assert_eq!(blocking::resolve(&copy, &opts).unwrap(), image.manifest);

    // Only the credential file holds the secret (base64, as Docker's does).
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for file in kiln_testkit::files_under(dir.path()) {
        if file.starts_with(&docker_dir) || file == kiln_file {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(PASSWORD),
            "{} holds the password",
            file.display()
        );
        assert!(
            !text.contains(&encoded),
            "{} holds the credentials",
            file.display()
        );
    }
    // logout forgets them.
    assert!(logout(&host, &opts).unwrap());
    assert!(!logout(&host, &opts).unwrap());
    let err = blocking::resolve(&busybox, &opts).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    errors.push(format!("{err} {err:?}"));

    for text in &errors {
        eprintln!("error seen: {text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains(WRONG),
            "a password leaked into an error: {text}"
        );
    }
}
