//! Chunked redaction: secrets split across chunks are still masked, the
//! result never depends on where the chunk boundaries fall, nothing emitted
//! is ever retracted, and ordinary output is not delayed.

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use common::*;
use kiln_scrub::{Redactor, MASK};

fn split_in_two(r: &Redactor, input: &[u8], at: usize) -> Vec<u8> {
    let mut s = r.stream();
    let (a, b) = input.split_at(at);
    let mut out = s.push(a);
    out.extend(s.push(b));
    out.extend(s.finish());
    out
}

#[test]
fn every_form_split_at_every_position() {
    for secret in all_secrets() {
        let r = Redactor::new([&secret]);
        for (name, form) in standalone_forms(&secret) {
            let text = surround(&form);
            let want = if must_mask_form(&secret, &form) {
                masked_text()
            } else {
                text.clone()
            };
            for at in 0..=text.len() {
                let out = split_in_two(&r, &text, at);
                assert_eq!(
                    show(&out),
                    show(&want),
                    "{name} of {:?} split at {at}",
                    show(&secret)
                );
            }
            let out = stream_chunked(&r, &text, &[1]);
            assert_eq!(
                show(&out),
                show(&want),
                "{name} of {:?} byte by byte",
                show(&secret)
            );
        }
    }
}

#[test]
fn base64_streams_split_at_every_position() {
    let mut rng = Rng(0x5eed_0101);
    let secrets = [
        named_secrets().swap_remove(1),
        sweep_secret(13),
        sweep_secret(14),
        sweep_secret(15),
    ];
    for secret in secrets {
        let r = Redactor::new([&secret]);
        let inner = STANDARD.encode(&secret).into_bytes();
        for p in 0..3 {
            for (doubled, payload) in [(false, &secret), (true, &inner)] {
                let mut data = rng.bytes(p);
                data.extend_from_slice(payload);
                data.extend(rng.bytes(2));
                for (name, engine) in ENGINES {
                    let enc = engine.encode(&data).into_bytes();
                    let want = r.redact(&enc);
                    let span = p..p + payload.len();
                    let e = expect(enc.len(), data.len(), span.clone(), span);
                    let ctx = format!("{name} doubled={doubled} p={p}");
                    check_stream(&enc, &want, &e, &ctx);
                    assert!(contains(&want, MASK.as_bytes()), "{ctx}");
                    for at in 0..=enc.len() {
                        assert_eq!(split_in_two(&r, &enc, at), want, "{ctx} split at {at}");
                    }
                    assert_eq!(stream_chunked(&r, &enc, &[1]), want, "{ctx} byte by byte");
                }
            }
        }
    }
}

#[test]
fn three_chunks_at_every_pair_of_positions() {
    let secret = b"p@ss w0rd/with+plus=eq";
    let r = Redactor::new([secret]);
    let double = URL_SAFE.encode(STANDARD.encode(secret));
    let text = [
        b"lead ",
        secret.as_slice(),
        b" mid ",
        double.as_bytes(),
        b" tail\n",
    ]
    .concat();
    let want = b"lead *** mid *** tail\n".to_vec();
    assert_eq!(r.redact(&text), want);
    for i in 0..=text.len() {
        for j in i..=text.len() {
            let mut s = r.stream();
            let mut out = s.push(&text[..i]);
            out.extend(s.push(&text[i..j]));
            out.extend(s.push(&text[j..]));
            out.extend(s.finish());
            assert_eq!(show(&out), show(&want), "split at {i} and {j}");
        }
    }
}

/// Patterns that overlap each other and themselves are where a careless
/// hold-back rule would emit the start of a match and then find it too late,
/// or pick a different match than one-shot redaction. Exhaustively try short
/// strings over a tiny alphabet, at every split, and one byte at a time, and
/// check after every push that what was emitted is a prefix of the one-shot
/// result (output is never retracted).
#[test]
fn overlapping_patterns_never_reach_into_emitted_output() {
    let r = Redactor::new(["abab", "bab", "aab", "bbbbbb", "ca"]);
    let alphabet = b"abc";
    for len in 0..=7u32 {
        for code in 0..alphabet.len().pow(len) {
            let mut c = code;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    let b = alphabet[c % alphabet.len()];
                    c /= alphabet.len();
                    b
                })
                .collect();
            let want = r.redact(&text);
            for at in 0..=text.len() {
                let mut s = r.stream();
                let first = s.push(&text[..at]);
                assert!(
                    want.starts_with(&first),
                    "{} split at {at}: emitted {}",
                    show(&text),
                    show(&first)
                );
                let mut out = first;
                out.extend(s.push(&text[at..]));
                out.extend(s.finish());
                assert_eq!(out, want, "{} split at {at}", show(&text));
            }
            let mut s = r.stream();
            let mut out = Vec::new();
            for b in &text {
                out.extend(s.push(std::slice::from_ref(b)));
                assert!(
                    want.starts_with(&out),
                    "{} byte by byte: emitted {}",
                    show(&text),
                    show(&out)
                );
            }
            out.extend(s.finish());
            assert_eq!(out, want, "{} byte by byte", show(&text));
        }
    }
}

#[test]
fn random_chunkings_of_a_busy_log_match_one_shot() {
    let secrets = all_secrets();
    let r = Redactor::new(&secrets);
    let mut rng = Rng(0x5eed_0102);
    let mut log = Vec::new();
    for i in 0..400 {
        log.extend_from_slice(format!("step {i}: doing things\n").as_bytes());
        if rng.below(7) == 0 {
            let secret = &secrets[rng.below(secrets.len())];
            let forms = standalone_forms(secret);
            let (_, form) = &forms[rng.below(forms.len())];
            log.extend_from_slice(b"value=");
            log.extend_from_slice(form);
            log.push(b'\n');
        }
        if rng.below(11) == 0 {
            log.extend(rng.bytes(20));
        }
    }
    let want = r.redact(&log);
    assert!(want.len() < log.len(), "something must have been masked");
    for round in 0..30 {
        let sizes: Vec<usize> = (0..17).map(|_| 1 + rng.below(200)).collect();
        let out = stream_chunked(&r, &log, &sizes);
        assert!(
            out == want,
            "round {round} with chunk sizes {sizes:?} differs"
        );
    }
}

#[test]
fn ordinary_lines_are_emitted_immediately() {
    let r = Redactor::new(["s3cr3t-token-value", "another/secret=="]);
    let mut s = r.stream();
    for line in [
        &b"compiling foo v0.1.0\n"[..],
        b"running 3 tests\n",
        b"\xff\xfe binary\n",
        b"\n",
    ] {
        assert_eq!(s.push(line), line, "line must not be held back");
    }
    // A line that ends with a masked secret is also complete.
    assert_eq!(s.push(b"token s3cr3t-token-value\n"), b"token ***\n");
    // Text without a newline flows too, as long as its end cannot start a
    // secret.
    assert_eq!(s.push(b"progress 42%"), b"progress 42%");
    assert_eq!(s.finish(), b"");
}

#[test]
fn only_a_possible_secret_prefix_is_held() {
    let r = Redactor::new(["s3cr3t-token-value"]);
    let mut s = r.stream();
    assert_eq!(s.push(b"prefix s3cr"), b"prefix ");
    assert_eq!(s.push(b"3t-tok"), b"");
    // The candidate dies; everything held comes out at once.
    assert_eq!(s.push(b"en-valve\n"), b"s3cr3t-token-valve\n");
    assert_eq!(s.push(b"again s3cr3t-"), b"again ");
    assert_eq!(s.push(b"token-value"), MASK.as_bytes());
    assert_eq!(s.push(b" done\n"), b" done\n");
    // A candidate still open at the end of the stream is flushed verbatim.
    assert_eq!(s.push(b"s3cr3t"), b"");
    assert_eq!(s.finish(), b"s3cr3t");
}

#[test]
fn secret_spread_over_many_chunks() {
    let secret = "a much longer secret value used as a password 1234567890";
    let r = Redactor::new([secret]);
    let text = format!("start {secret} end\n");
    for size in 1..=secret.len() + 8 {
        let out = stream_chunked(&r, text.as_bytes(), &[size]);
        assert_eq!(show(&out), "start *** end\n", "chunk size {size}");
    }
}

#[test]
fn stream_is_send() {
    let r = Redactor::new(["threaded-secret"]);
    let mut s = r.stream();
    let first = s.push(b"x threaded-");
    let handle = std::thread::spawn(move || {
        let mut out = s.push(b"secret y");
        out.extend(s.finish());
        out
    });
    let rest = handle.join().unwrap_or_default();
    assert_eq!([first, rest].concat(), b"x *** y");
}
