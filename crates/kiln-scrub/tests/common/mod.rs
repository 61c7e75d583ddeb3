//! Helpers shared by the integration tests.
//!
//! Expected encodings are built here with the `base64`, `hex` and
//! `percent-encoding` crates directly and the "which characters depend on the
//! secret" question is answered per character from the bit layout, so the
//! tests do not reuse the crate's own pattern derivation.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::ops::Range;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::engine::GeneralPurpose;
use base64::Engine;
use kiln_scrub::{Redactor, MASK};
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub const BEFORE: &[u8] = b"before: ";
pub const AFTER: &[u8] = b" :after\n";

pub const ENGINES: [(&str, &GeneralPurpose); 4] = [
    ("standard", &STANDARD),
    ("standard-nopad", &STANDARD_NO_PAD),
    ("url", &URL_SAFE),
    ("url-nopad", &URL_SAFE_NO_PAD),
];

/// Hand-picked secrets with the awkward characters: spaces, `/`, `+`, `=`,
/// quotes, NUL and non-ASCII bytes, including invalid UTF-8.
pub fn named_secrets() -> Vec<Vec<u8>> {
    vec![
        b"hunter2hunter2".to_vec(),
        b"p@ss w0rd/with+plus=eq".to_vec(),
        b"ghp_AbCdEf0123456789xyzXYZ".to_vec(),
        b"\xff\xfe\x00non-ascii \xc3\xa9\xe2\x82\xac".to_vec(),
        b"{\"key\": \"va/l+u=e\"}".to_vec(),
        "pässwörd–ünïcode".as_bytes().to_vec(),
    ]
}

/// A secret of exactly `n` bytes. Lengths 1..=40 walk through every
/// combination of start offset and length modulo 3. The leading 0xFF is in
/// no encoding alphabet and in none of the surrounding text, so the raw value
/// can never turn up inside an encoded form or the test scaffolding.
pub fn sweep_secret(n: usize) -> Vec<u8> {
    const POOL: &[u8] = b"a/B+c=D e\xc3\xa9f9-_.~%Zq\x00\x7f!";
    let mut s = vec![0xFF];
    s.extend((1..n).map(|i| POOL[(i + n) % POOL.len()]));
    s
}

pub fn sweep_secrets() -> Vec<Vec<u8>> {
    (1..=40).map(sweep_secret).collect()
}

pub fn all_secrets() -> Vec<Vec<u8>> {
    let mut v = named_secrets();
    v.extend(sweep_secrets());
    v
}

const URL_STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn lower_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut left = 0;
    for c in s.chars() {
        if c == '%' {
            left = 2;
            out.push(c);
        } else if left > 0 {
            left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Every standalone encoded form the redactor must recognise, labelled.
pub fn standalone_forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut forms = vec![("raw".to_owned(), secret.to_vec())];
    for (name, engine) in ENGINES {
        forms.push((format!("base64 {name}"), engine.encode(secret).into_bytes()));
    }
    let inner = STANDARD.encode(secret);
    for (name, engine) in ENGINES {
        forms.push((
            format!("double base64 {name}"),
            engine.encode(&inner).into_bytes(),
        ));
    }
    forms.push(("hex".to_owned(), hex::encode(secret).into_bytes()));
    forms.push(("HEX".to_owned(), hex::encode_upper(secret).into_bytes()));
    let upper = percent_encode(secret, URL_STRICT).to_string();
    let lower = lower_escapes(&upper);
    forms.push(("url upper".to_owned(), upper.clone().into_bytes()));
    forms.push((
        "url form upper".to_owned(),
        upper.replace("%20", "+").into_bytes(),
    ));
    forms.push(("url lower".to_owned(), lower.clone().into_bytes()));
    forms.push((
        "url form lower".to_owned(),
        lower.replace("%20", "+").into_bytes(),
    ));
    forms
}

/// Whether a standalone form is long enough that it must be masked.
pub fn must_mask_form(secret: &[u8], form: &[u8]) -> bool {
    form == secret || form.len() >= 6
}

pub fn surround(form: &[u8]) -> Vec<u8> {
    [BEFORE, form, AFTER].concat()
}

pub fn masked_text() -> Vec<u8> {
    [BEFORE, MASK.as_bytes(), AFTER].concat()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Input bytes that base64 character `i` is built from (bits 6i..6i+6).
pub fn deps(i: usize) -> Range<usize> {
    (6 * i) / 8..(6 * i + 5) / 8 + 1
}

/// What a base64 stream of `data_len` input bytes must and may mask.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Characters computed purely from secret bits: must be masked.
    pub must: Range<usize>,
    /// Characters computed purely from bytes before anything secret-related:
    /// must survive.
    pub keep_prefix: usize,
    /// Characters from here on are computed purely from bytes after
    /// anything secret-related: must survive.
    pub keep_suffix_from: usize,
}

/// `secret` is the byte range whose content is fully secret-determined;
/// `touched` the (wider) range whose content depends on the secret at all.
pub fn expect(
    encoded_len: usize,
    data_len: usize,
    secret: Range<usize>,
    touched: Range<usize>,
) -> Expect {
    let data_chars = (8 * data_len).div_ceil(6);
    let inside = |r: &Range<usize>, d: &Range<usize>| d.start >= r.start && d.end <= r.end;
    let secret_chars: Vec<usize> = (0..data_chars)
        .filter(|&i| inside(&secret, &deps(i)))
        .collect();
    let must = match (secret_chars.first(), secret_chars.last()) {
        (Some(&a), Some(&b)) => a..b + 1,
        _ => 0..0,
    };
    let keep_prefix = (0..data_chars)
        .take_while(|&i| deps(i).end <= touched.start)
        .count();
    let keep_suffix_from = (0..data_chars)
        .find(|&i| deps(i).start >= touched.end)
        .unwrap_or(encoded_len);
    Expect {
        must,
        keep_prefix,
        keep_suffix_from,
    }
}

/// Chars of a standard padded base64 stream of `data` that depend on any bit
/// of `secret` (a byte range of `data`), plus trailing padding when the
/// secret ends the data, since the padding then follows from its length.
pub fn touched_chars(data_len: usize, secret: Range<usize>, encoded_len: usize) -> Range<usize> {
    let data_chars = (8 * data_len).div_ceil(6);
    let overlaps = |d: Range<usize>| d.start < secret.end && secret.start < d.end;
    let first = (0..data_chars).find(|&i| overlaps(deps(i))).unwrap_or(0);
    let last = (0..data_chars)
        .rev()
        .find(|&i| overlaps(deps(i)))
        .unwrap_or(0);
    let end = if secret.end == data_len {
        encoded_len
    } else {
        last + 1
    };
    first..end
}

/// Checks that `redacted` is `encoded` with exactly one run replaced by the
/// mask, covering all of `must` and none of the keep regions; or, when the
/// secret-only run is too short to be a pattern, possibly untouched.
pub fn check_stream(encoded: &[u8], redacted: &[u8], e: &Expect, ctx: &str) {
    assert!(!contains(encoded, b"*"), "base64 never contains '*'");
    let must_mask = e.must.len() >= 6;
    let Some(x) = redacted
        .windows(MASK.len())
        .position(|w| w == MASK.as_bytes())
    else {
        assert!(!must_mask, "{ctx}: nothing masked in {}", show(encoded));
        assert_eq!(redacted, encoded, "{ctx}: changed without a mask");
        return;
    };
    let after = &redacted[x + MASK.len()..];
    assert!(
        !contains(after, b"*"),
        "{ctx}: more than one mask: {}",
        show(redacted)
    );
    assert!(encoded.starts_with(&redacted[..x]), "{ctx}: prefix altered");
    assert!(encoded.ends_with(after), "{ctx}: suffix altered");
    let y = encoded.len() - after.len();
    let window = format!(
        "{ctx}: masked {x}..{y}, expected must {:?}, keep ..{} and {}.. of {}",
        e.must,
        e.keep_prefix,
        e.keep_suffix_from,
        show(encoded)
    );
    if must_mask {
        assert!(x <= e.must.start && y >= e.must.end, "{window}");
    }
    assert!(x >= e.keep_prefix && y <= e.keep_suffix_from, "{window}");
    assert!(x < y, "{window}");
}

/// One-shot redaction via the streaming interface with the given chunk sizes
/// (cycled), for comparing against `Redactor::redact`.
pub fn stream_chunked(r: &Redactor, input: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut s = r.stream();
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.extend(s.push(chunk));
        rest = tail;
        i += 1;
    }
    out.extend(s.finish());
    out
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
