//! Secrets never reach output, events, errors, cache keys or layers — in any
//! of the encodings a step might print them in.

mod common;

use base64::Engine as _;
use common::*;
use kiln_engine::{CacheVolume, Event};

const VALUE: &str = "p@ss w/rd+1=ok;Zebra";

fn forms() -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let inner = b64.encode(VALUE);
    let url: String = VALUE
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    vec![
        ("raw", VALUE.to_owned()),
        ("base64", inner.clone()),
        ("double base64", b64.encode(&inner)),
        ("hex", hex::encode(VALUE)),
        ("url", url),
    ]
}

// Each line prints the secret in one encoding, made inside the container
// from $TOKEN so the test never puts an encoded form in a command line.
const PRINT_EVERY_FORM: &str = r#"
printf 'raw: %s\n' "$TOKEN"
printf 'b64: '; printf %s "$TOKEN" | base64
printf 'b64+1: '; printf 'x%s' "$TOKEN" | base64
printf 'b64+2: '; printf 'xy%s' "$TOKEN" | base64
printf 'double: '; printf %s "$TOKEN" | base64 | tr -d '\n' | base64
printf 'hex: '; printf %s "$TOKEN" | hexdump -ve '1/1 "%.2x"'; echo
printf 'url: '; printf %s "$TOKEN" | sed -e 's/%/%25/g' -e 's/@/%40/g' -e 's/ /%20/g' -e 's#/#%2F#g' -e 's/+/%2B/g' -e 's/=/%3D/g' -e 's/;/%3B/g'; echo
printf 'split: '; printf %s "$TOKEN" | head -c 7; sleep 0.3; printf %s "$TOKEN" | tail -c +8; echo
printf 'file: '; cat /run/secrets/token; echo
echo "to stderr: $TOKEN" >&2
echo visible-marker
"#;

fn assert_clean(what: &str, text: &str) {
    for (form, encoded) in forms() {
        assert!(
            !text.contains(&encoded),
            "{form} form of the secret in {what}:\n{text}"
        );
    }
    // The offset encodings: the stable middle of base64 at offsets 1 and 2.
    let b64 = base64::engine::general_purpose::STANDARD;
    for prefix in ["x", "xy"] {
        let enc = b64.encode(format!("{prefix}{VALUE}"));
        let core = &enc[4..enc.len() - 4];
        assert!(
            !text.contains(core),
            "offset base64 ({prefix}) in {what}:\n{text}"
        );
    }
}

#[tokio::test]
async fn secret_is_scrubbed_in_every_encoding_everywhere() {
    if !privileged() {
        return;
    }
    std::env::set_var("KILN_TEST_SECRET_VALUE", VALUE);
    let f = fixture();
    let token = f.engine.secret_from_env("KILN_TEST_SECRET_VALUE").unwrap();
    let mut events = f.engine.subscribe();
    let step = f
        .engine
        .container(IMAGE)
        .with_secret_variable("TOKEN", &token)
        .with_mounted_secret("/run/secrets/token", &token)
        .with_exec(["sh", "-c", PRINT_EVERY_FORM]);
    let stdout = step.stdout().await.unwrap();
    let stderr = step.stderr().await.unwrap();
    assert!(
        stdout.contains("visible-marker"),
        "ordinary output survives: {stdout}"
    );
    assert!(stdout.contains("raw: ***"), "{stdout}");
    assert_clean("stdout", &stdout);
    assert_clean("stderr", &stderr);
    let events = collect(&mut events);
    let streamed: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect();
    assert!(streamed.contains("visible-marker"));
    assert_clean("streamed events", &streamed);
    assert_clean("event names", &format!("{events:?}"));

    // The mounted secret file leaves nothing in the step's layer. Read the
    // result's filesystem directly: a further step would mount it again.
    assert!(matches!(
        step.file("/run/secrets/token").contents().await,
        Err(kiln_engine::Error::NotFound { .. })
    ));
    let root = step.directory("/").entries().await.unwrap();
    assert!(
        !root.contains(&"run".to_string()),
        "mount point debris in the layer: {root:?}"
    );

    // A failing step's error shows its output tail, scrubbed.
    let err = f
        .engine
        .container(IMAGE)
        .with_secret_variable("TOKEN", &token)
        .with_exec([
            "sh",
            "-c",
            "echo leaking $TOKEN; printf %s \"$TOKEN\" | base64; exit 4",
        ])
        .sync()
        .await
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(message.contains("leaking ***"), "{message}");
    assert_clean("error message", &message);

    // Nothing in the store holds the value in any form: blobs, layers, records, keys.
    for file in kiln_testkit::files_under(&f.store_path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let name = file.display().to_string();
        assert_clean(&name, &name);
        assert_clean(&name, &String::from_utf8_lossy(&bytes));
    }
}

#[tokio::test]
async fn secret_value_changes_rerun_the_step_without_being_in_the_key() {
    if !privileged() {
        return;
    }
    let f = fixture();
    let run = |value: &str| {
        let dir = f.path("secrets");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, value).unwrap();
        let engine = f.reopen();
        let token = engine.secret_from_file(&path).unwrap();
        async move {
            engine
                .container(IMAGE)
                .with_mounted_cache("/count", &CacheVolume::new("c"))
                .with_secret_variable("TOKEN", &token)
                .with_exec(["sh", "-c", &bump("deploy")])
                .sync()
                .await
                .unwrap();
        }
    };
    run("first-value").await;
    run("first-value").await;
    assert_eq!(f.counter("c", "deploy"), 1, "same secret: cached");
    run("second-value").await;
    assert_eq!(f.counter("c", "deploy"), 2, "rotated secret: re-run");
}

#[tokio::test]
async fn missing_secret_is_reported_before_anything_runs() {
    let err = kiln_engine::Engine::open(kiln_engine::EngineOptions {
        store: tempfile::tempdir().unwrap().path().join("s"),
        ..Default::default()
    })
    .unwrap()
    .secret_from_env("KILN_TEST_DEFINITELY_UNSET")
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("KILN_TEST_DEFINITELY_UNSET is not set"),
        "{err}"
    );
}
