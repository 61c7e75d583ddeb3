//! Throughput of redaction over a large, realistic log with a handful of
//! secrets of the sizes jobs really have (a token, medium passwords, a PEM
//! key). Ignored by default because it is a measurement, not a check; run it
//! with
//!
//! ```text
//! cargo test -p kiln-scrub --release --test throughput -- --ignored --nocapture
//! ```

mod common;

use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use kiln_scrub::{Redactor, MASK};

/// A PEM-shaped secret: header, 64-column base64 body, footer.
fn pem_like(rng: &mut Rng, body_bytes: usize) -> Vec<u8> {
    let body = STANDARD.encode(rng.bytes(body_bytes));
    let mut pem = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
    for line in body.as_bytes().chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END PRIVATE KEY-----\n");
    pem
}

fn printable(rng: &mut Rng, n: usize) -> Vec<u8> {
    const POOL: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!@#$%^&*()+=/";
    (0..n).map(|_| POOL[rng.below(POOL.len())]).collect()
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn fifty_megabytes_with_five_secrets() {
    let mut rng = Rng(0x7e57_0042);
    let secrets = vec![
        b"ghp_AbCdEf0123456789xyzXYZ0123456789abcd".to_vec(),
        printable(&mut rng, 58),
        printable(&mut rng, 100),
        printable(&mut rng, 300),
        pem_like(&mut rng, 1218),
    ];

    let t = Instant::now();
    let r = Redactor::new(&secrets);
    let build = t.elapsed();

    let mut input = Vec::with_capacity(51 << 20);
    let mut i = 0u64;
    while input.len() < 50 << 20 {
        let line = match i % 100 {
            // Unrelated base64 (an artifact digest dump, say), wrapped the
            // way `base64` prints it: the worst case for base64 patterns.
            7 => {
                let enc = STANDARD.encode(rng.bytes(57));
                format!("{enc}\n")
            }
            23 => format!(
                "{{\"id\": {i}, \"msg\": \"upload \\\"part\\\" done\", \"path\": \"a\\/b\"}}\n"
            ),
            61 if i % 1000 == 61 => {
                let s = &secrets[rng.below(secrets.len())];
                format!("token={}\n", String::from_utf8_lossy(s))
            }
            89 if i % 1000 == 89 => {
                let s = &secrets[rng.below(secrets.len())];
                format!("b64={}\n", STANDARD.encode(s))
            }
            _ => format!("[{i:>9}] compiling crate number {i} with some ordinary words\n"),
        };
        input.extend_from_slice(line.as_bytes());
        i += 1;
    }

    let t = Instant::now();
    let one_shot = r.redact(&input);
    let one_shot_time = t.elapsed();

    let t = Instant::now();
    let streamed = stream_chunked(&r, &input, &[65536]);
    let streamed_time = t.elapsed();

    assert!(one_shot == streamed, "streamed result differs");
    assert!(contains(&one_shot, MASK.as_bytes()));
    for s in &secrets {
        assert!(!contains(&one_shot, s), "raw secret survived");
    }

    let mib = input.len() as f64 / f64::from(1 << 20);
    eprintln!(
        "{mib:.1} MiB, {} secrets, {r:?}: build {build:?}, one-shot {one_shot_time:?} \
         ({:.0} MiB/s), streamed 64 KiB chunks {streamed_time:?} ({:.0} MiB/s)",
        secrets.len(),
        mib / one_shot_time.as_secs_f64(),
        mib / streamed_time.as_secs_f64(),
    );
}
