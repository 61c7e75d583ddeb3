//! Output without secrets comes out byte-for-byte identical, and large
//! outputs are handled in one pass.

mod common;

use std::time::Instant;

use common::*;
use kiln_scrub::{Redactor, MASK};

#[test]
fn invalid_utf8_without_secrets_is_untouched() {
    let r = Redactor::new(named_secrets());
    let mut rng = Rng(0x5eed_0201);
    let mut input =
        b"\xff\xfe\x80 lone continuation \xc3 truncated \xe2\x82 and \x00 NUL\r\n".to_vec();
    input.extend(rng.bytes(4096));
    assert_eq!(r.redact(&input), input);
    for at in 0..=256 {
        let out = {
            let mut s = r.stream();
            let mut out = s.push(&input[..at]);
            out.extend(s.push(&input[at..]));
            out.extend(s.finish());
            out
        };
        assert!(out == input, "split at {at} changed the bytes");
    }
    assert!(
        stream_chunked(&r, &input, &[1]) == input,
        "byte by byte changed the bytes"
    );
    assert!(stream_chunked(&r, &input, &[3, 7, 64]) == input);
}

#[test]
fn near_misses_are_untouched() {
    let secret = "p@ss w0rd/with+plus=eq";
    let r = Redactor::new([secret]);
    // Each differs from a secret form in one place. For base64 the change
    // is mid-string: the last characters are not part of every alignment's
    // core, so altering only them must still mask (checked below).
    let text = "p@ss w0rd/with+plus=eQ cEBzcyB3MHJkL3dpdGgrCGx1cz1lcQ== \
                7040737320773072642f776974682b706c75733d6570 p%40ss%20w0rd%2Fwith%2Bplus%3Deg";
    assert_eq!(r.redact_str(text), text);
    // Changing only the final characters leaves the stable core in place.
    assert_eq!(
        r.redact_str("x cEBzcyB3MHJkL3dpdGgrcGx1cz1lcR== y"),
        "x ***R== y"
    );
}

#[test]
fn redact_str_keeps_unicode_intact() {
    let r = Redactor::new(["pässwörd–ünïcode"]);
    let text = "naïve café — 日本語 🎉 pässwörd–ünïcode ünïcode\n";
    assert_eq!(r.redact_str(text), "naïve café — 日本語 🎉 *** ünïcode\n");
    let clean = "naïve café — 日本語 🎉\n";
    assert_eq!(r.redact_str(clean), clean);
}

#[test]
fn empty_redactor_streams_everything_through() {
    let r = Redactor::new(Vec::<Vec<u8>>::new());
    assert!(r.is_empty());
    let mut s = r.stream();
    assert_eq!(s.push(b"\xffanything"), b"\xffanything");
    assert_eq!(s.finish(), b"");
}

#[test]
fn debug_output_does_not_reveal_secrets() {
    let secrets = named_secrets();
    let r = Redactor::new(&secrets);
    let dbg = format!("{r:?} {r:#?}");
    for secret in &secrets {
        for (name, form) in standalone_forms(secret) {
            if form.len() >= 6 {
                assert!(!contains(dbg.as_bytes(), &form), "{name} in {dbg}");
            }
        }
    }
    assert!(dbg.contains("patterns"), "{dbg}");
}

/// Several MB of log with secrets sprinkled in: one-shot and streamed
/// redaction both give exactly the expected text. The timing is printed, not
/// asserted, so a loaded CI machine cannot make this flaky; a per-pattern
/// scan of the buffer would still show up as a many-second run.
#[test]
fn megabytes_of_output() {
    let secrets = all_secrets();
    let r = Redactor::new(&secrets);
    let token = "ghp_AbCdEf0123456789xyzXYZ";
    let mut input = Vec::new();
    let mut want = Vec::new();
    let mut i = 0u64;
    while input.len() < 8 << 20 {
        let line = format!("auth: {token}\n");
        input.extend_from_slice(line.as_bytes());
        want.extend_from_slice(format!("auth: {MASK}\n").as_bytes());
        for _ in 0..1000 {
            let line = format!("[{i:>8}] compiling crate number {i} with some ordinary words\n");
            input.extend_from_slice(line.as_bytes());
            want.extend_from_slice(line.as_bytes());
            i += 1;
        }
    }

    let t = Instant::now();
    let out = r.redact(&input);
    let one_shot = t.elapsed();
    assert!(out == want, "one-shot result differs");

    let t = Instant::now();
    let out = stream_chunked(&r, &input, &[65536, 4093, 100_000]);
    let streamed = t.elapsed();
    assert!(out == want, "streamed result differs");

    eprintln!(
        "{} MiB with {} secrets: one-shot {one_shot:?}, streamed {streamed:?}",
        input.len() >> 20,
        secrets.len()
    );
}
