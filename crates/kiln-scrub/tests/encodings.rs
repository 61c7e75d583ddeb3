//! Every supported encoding of a secret is masked, standalone and embedded
//! in longer base64 streams at every alignment, and the text around it
//! survives.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use kiln_scrub::{Redactor, MASK};

#[test]
fn standalone_forms_are_masked_in_surrounding_text() {
    for secret in all_secrets() {
        let r = Redactor::new([&secret]);
        for (name, form) in standalone_forms(&secret) {
            let text = surround(&form);
            let out = r.redact(&text);
            if must_mask_form(&secret, &form) {
                assert_eq!(
                    show(&out),
                    show(&masked_text()),
                    "{name} of {:?}",
                    show(&secret)
                );
            } else {
                // Too short to mask without hitting unrelated text.
                assert_eq!(
                    out,
                    text,
                    "{name} of {:?} should be left alone",
                    show(&secret)
                );
            }
        }
    }
}

#[test]
fn standalone_forms_are_masked_with_all_secrets_loaded() {
    let secrets = all_secrets();
    let r = Redactor::new(&secrets);
    for secret in &secrets {
        for (name, form) in standalone_forms(secret) {
            let text = surround(&form);
            let out = r.redact(&text);
            if must_mask_form(secret, &form) {
                assert_eq!(
                    show(&out),
                    show(&masked_text()),
                    "{name} of {:?}",
                    show(secret)
                );
            } else {
                assert_eq!(out, text, "{name} of {:?}", show(secret));
            }
        }
    }
}

#[test]
fn known_encodings_of_a_password() {
    let r = Redactor::new(["p@ss w0rd/with+plus=eq"]);
    for form in [
        "p@ss w0rd/with+plus=eq",
        "cEBzcyB3MHJkL3dpdGgrcGx1cz1lcQ==",
        "cEBzcyB3MHJkL3dpdGgrcGx1cz1lcQ",
        "Y0VCemN5QjNNSEprTDNkcGRHZ3JjR3gxY3oxbGNRPT0=",
        "7040737320773072642f776974682b706c75733d6571",
        "7040737320773072642F776974682B706C75733D6571",
        "p%40ss%20w0rd%2Fwith%2Bplus%3Deq",
        "p%40ss%20w0rd%2fwith%2bplus%3deq",
        "p%40ss+w0rd%2Fwith%2Bplus%3Deq",
    ] {
        let text = format!("x={form}&y=1");
        assert_eq!(r.redact_str(&text), "x=***&y=1", "{form}");
    }
}

#[test]
fn single_base64_streams_at_every_offset() {
    let mut rng = Rng(0x5eed_0001);
    for secret in all_secrets() {
        let r = Redactor::new([&secret]);
        check_single_streams(&r, &secret, &mut rng);
    }
}

#[test]
fn single_base64_streams_with_all_secrets_loaded() {
    let mut rng = Rng(0x5eed_0002);
    let secrets = all_secrets();
    let r = Redactor::new(&secrets);
    for secret in &secrets {
        check_single_streams(&r, secret, &mut rng);
    }
}

fn check_single_streams(r: &Redactor, secret: &[u8], rng: &mut Rng) {
    for p in 0..6 {
        for q in 0..4 {
            for trial in 0..2 {
                let mut data = rng.bytes(p);
                data.extend_from_slice(secret);
                data.extend(rng.bytes(q));
                for (name, engine) in ENGINES {
                    let enc = engine.encode(&data).into_bytes();
                    let out = r.redact(&enc);
                    let span = p..p + secret.len();
                    let e = expect(enc.len(), data.len(), span.clone(), span);
                    let ctx = format!("{name} p={p} q={q} trial={trial} secret={:?}", show(secret));
                    check_stream(&enc, &out, &e, &ctx);
                }
            }
        }
    }
}

#[test]
fn double_base64_streams_at_every_outer_offset() {
    let mut rng = Rng(0x5eed_0003);
    for secret in all_secrets() {
        let r = Redactor::new([&secret]);
        let inner = STANDARD.encode(&secret).into_bytes();
        for p in 0..6 {
            for q in 0..4 {
                let mut data = rng.bytes(p);
                data.extend_from_slice(&inner);
                data.extend(rng.bytes(q));
                for (name, engine) in ENGINES {
                    let enc = engine.encode(&data).into_bytes();
                    let out = r.redact(&enc);
                    let span = p..p + inner.len();
                    let e = expect(enc.len(), data.len(), span.clone(), span);
                    let ctx = format!("outer {name} p={p} q={q} secret={:?}", show(&secret));
                    check_stream(&enc, &out, &e, &ctx);
                }
            }
        }
    }
}

/// The tj-actions shape: the secret sits at an arbitrary offset of a blob,
/// the blob is base64-encoded, and that text is embedded at an arbitrary
/// offset of something base64-encoded again.
#[test]
fn secret_inside_a_blob_encoded_twice() {
    let mut rng = Rng(0x5eed_0004);
    for secret in all_secrets() {
        let r = Redactor::new([&secret]);
        for p1 in 0..4 {
            for q1 in 0..3 {
                let mut blob = rng.bytes(p1 + 3 * (p1 % 2));
                let start = blob.len();
                blob.extend_from_slice(&secret);
                blob.extend(rng.bytes(q1));
                let inner = STANDARD.encode(&blob).into_bytes();
                let span = start..start + secret.len();
                let ie = expect(inner.len(), blob.len(), span.clone(), span.clone());
                let it = touched_chars(blob.len(), span, inner.len());
                for p2 in 0..3 {
                    for q2 in 0..3 {
                        let mut data = rng.bytes(p2);
                        data.extend_from_slice(&inner);
                        data.extend(rng.bytes(q2));
                        for (name, engine) in ENGINES {
                            let enc = engine.encode(&data).into_bytes();
                            let out = r.redact(&enc);
                            let e = expect(
                                enc.len(),
                                data.len(),
                                p2 + ie.must.start..p2 + ie.must.end,
                                p2 + it.start..p2 + it.end,
                            );
                            let ctx = format!(
                                "outer {name} p1={start} q1={q1} p2={p2} q2={q2} secret={:?}",
                                show(&secret)
                            );
                            check_stream(&enc, &out, &e, &ctx);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn long_secrets_are_masked_in_their_base64_streams() {
    // Guards against the stream checks passing vacuously: for these lengths
    // the secret-only run is always long enough that masking is mandatory.
    let mut rng = Rng(0x5eed_0005);
    for n in 12..=40 {
        let secret = sweep_secret(n);
        let r = Redactor::new([&secret]);
        for p in 0..3 {
            let mut data = rng.bytes(p);
            data.extend_from_slice(&secret);
            data.extend(rng.bytes(2));
            let enc = STANDARD.encode(&data);
            let out = r.redact_str(&enc);
            assert!(out.contains(MASK), "n={n} p={p}: {enc}");
            assert!(out.len() < enc.len(), "n={n} p={p}");
            // The first character only depends on the random prefix (or,
            // with no prefix, the mask begins the output).
            if p > 0 {
                assert_eq!(out.as_bytes()[0], enc.as_bytes()[0], "n={n} p={p}");
            } else {
                assert!(out.starts_with(MASK), "n={n} p={p}");
            }
        }
    }
}

#[test]
fn hex_both_cases() {
    let r = Redactor::new(["hunter2"]);
    assert_eq!(r.redact_str("a 68756e74657232 b"), "a *** b");
    assert_eq!(r.redact_str("a 68756E74657232 b"), "a *** b");
}

#[test]
fn short_secret_only_masks_raw() {
    let r = Redactor::new(["ab"]);
    // Hex "6162" and base64 "YWI=" are too short to be safe to mask.
    assert_eq!(r.redact_str("6162 YWI= ab"), "6162 YWI= ***");
}

#[test]
fn lines_of_multiline_secrets() {
    let key =
        "-----BEGIN KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\r\nshort\r\n-----END KEY-----\r\n";
    let r = Redactor::new([key]);
    assert_eq!(r.redact_str(key), "***");
    let printed = "line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nend: -----END KEY-----\nword: short\n";
    assert_eq!(r.redact_str(printed), "line: ***\nend: ***\nword: short\n");
}

#[test]
fn several_secrets_in_one_buffer() {
    let r = Redactor::new(["alpha-secret", "beta/secret+", ""]);
    let input = format!(
        "a=alpha-secret b={} c={} d=plain",
        STANDARD.encode("beta/secret+"),
        hex::encode("alpha-secret")
    );
    assert_eq!(r.redact_str(&input), "a=*** b=*** c=*** d=plain");
}
