//! Derivation of the byte patterns that stand for one secret value.

use std::collections::BTreeSet;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Derived forms shorter than this are dropped: a 4-character base64 or hex
/// fragment occurs by chance in ordinary output far too often, and masking it
/// would corrupt logs while protecting only a couple of bits of the secret.
pub(crate) const MIN_DERIVED_LEN: usize = 6;

/// Lines of a multi-line secret (PEM keys, kubeconfigs) are masked on their
/// own because tools print them one by one; short lines such as a lone `}` or
/// `-----` would match everywhere, hence the higher bar.
pub(crate) const MIN_LINE_LEN: usize = 8;

/// RFC 3986 unreserved characters are the only ones every encoder leaves alone.
const URL_STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Python's `urllib.parse.quote` keeps `/` by default.
const URL_PATH: &AsciiSet = &URL_STRICT.remove(b'/');
/// JavaScript's `encodeURIComponent` keeps `!'()*` as well.
const URL_COMPONENT: &AsciiSet = &URL_STRICT
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*');
/// Some encoders escape everything that is not alphanumeric.
const URL_ALL: &AsciiSet = NON_ALPHANUMERIC;

const URL_SETS: [&AsciiSet; 4] = [URL_STRICT, URL_PATH, URL_COMPONENT, URL_ALL];

/// Collects patterns, deduplicated and with short derived forms dropped.
#[derive(Default)]
pub(crate) struct PatternSet {
    set: BTreeSet<Vec<u8>>,
}

impl PatternSet {
    /// Adds every form of `secret`. Empty secrets are ignored: an empty
    /// pattern would match between every pair of bytes.
    pub(crate) fn add_secret(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        self.set.insert(secret.to_vec());

        for form in derived_forms(secret) {
            self.add_derived(form);
        }

        if secret.contains(&b'\n') {
            for line in secret.split(|b| *b == b'\n') {
                let line = trim_cr(line);
                if line.len() >= MIN_LINE_LEN {
                    self.set.insert(line.to_vec());
                }
            }
        }
    }

    fn add_derived(&mut self, form: Vec<u8>) {
        if form.len() >= MIN_DERIVED_LEN {
            self.set.insert(form);
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Vec<u8>> {
        self.set.into_iter().collect()
    }
}

fn trim_cr(mut line: &[u8]) -> &[u8] {
    while let [b'\r', rest @ ..] = line {
        line = rest;
    }
    while let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// All encoded forms of `secret`, before length filtering.
fn derived_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();

    base64_forms(secret, &mut out);

    // Double base64 is what leaked secrets in the tj-actions compromise:
    // secrets scraped from memory, wrapped in JSON, were base64-encoded
    // twice. The secret sat at an arbitrary offset of the inner text, so that
    // text holds one of its alignment cores rather than its plain encoding,
    // and each of those is then encoded again at an arbitrary offset of the
    // outer stream.
    for inner in base64_inner_forms(secret) {
        base64_forms(&inner, &mut out);
    }

    out.push(hex::encode(secret).into_bytes());
    out.push(hex::encode_upper(secret).into_bytes());

    for set in URL_SETS {
        let upper = percent_encode(secret, set).to_string();
        let lower = lowercase_escapes(&upper);
        let upper_form = upper.replace("%20", "+");
        let lower_form = lower.replace("%20", "+");
        out.extend([upper, lower, upper_form, lower_form].map(String::into_bytes));
    }

    out
}

/// Lowercases the two hex digits after each `%`. A literal `%` never survives
/// percent-encoding, so every `%` in `encoded` starts an escape.
fn lowercase_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_digits_left = 0u8;
    for c in encoded.chars() {
        if c == '%' {
            hex_digits_left = 2;
            out.push(c);
        } else if hex_digits_left > 0 {
            hex_digits_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The standard-alphabet strings a secret becomes inside a base64 stream,
/// used as the inner layer of double encoding.
fn base64_inner_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut inner = vec![STANDARD.encode(secret).into_bytes()];
    for offset in 0..3 {
        if let Some(core) = aligned(secret, offset, &STANDARD_NO_PAD).core {
            inner.push(core);
        }
    }
    inner
}

/// Pushes, for both alphabets and all three alignments, the stable core plus
/// the padded and unpadded forms seen when the secret ends the stream.
fn base64_forms(data: &[u8], out: &mut Vec<Vec<u8>>) {
    for (padded, unpadded) in [(&STANDARD, &STANDARD_NO_PAD), (&URL_SAFE, &URL_SAFE_NO_PAD)] {
        for offset in 0..3 {
            let enc = aligned(data, offset, unpadded);
            out.extend(enc.core);
            out.extend(enc.tail);
            out.extend(aligned(data, offset, padded).tail);
        }
    }
}

struct Aligned {
    /// Characters that depend only on `data`, whatever surrounds it.
    core: Option<Vec<u8>>,
    /// From the first such character to the end of the encoding, for when
    /// `data` is the last thing in the stream (final partial group and any
    /// padding are then determined too).
    tail: Option<Vec<u8>>,
}

/// Encodes `data` as if it started `offset` bytes into a 3-byte group.
///
/// Base64 maps each 6-bit slice of the stream to one character. When the
/// secret starts `offset` bytes into a group, the characters straddling its
/// first and last bytes mix in neighbouring bits, so the only characters that
/// are the same in every stream containing the secret at that alignment are
/// those whose 6 bits lie wholly inside it: bit range [8*offset, 8*(offset+n)).
fn aligned(data: &[u8], offset: usize, engine: &impl Engine) -> Aligned {
    let mut shifted = vec![0u8; offset];
    shifted.extend_from_slice(data);
    let enc = engine.encode(&shifted).into_bytes();

    let first_bit = 8 * offset;
    let end_bit = 8 * (offset + data.len());
    let start = first_bit.div_ceil(6);
    let end = end_bit / 6;

    Aligned {
        core: enc
            .get(start..end)
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec),
        tail: enc
            .get(start..)
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(secret: &[u8]) -> Vec<Vec<u8>> {
        let mut set = PatternSet::default();
        set.add_secret(secret);
        set.into_vec()
    }

    /// A tiny deterministic generator so neighbour bytes vary without a
    /// dev-dependency.
    fn xorshift(state: &mut u64) -> u8 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 24) as u8
    }

    #[test]
    fn cores_are_stable_under_any_neighbours() {
        let secrets: [&[u8]; 4] = [
            b"hunter2hunter2",
            b"a/b+c=d e",
            b"\xff\x00\xc3\xa9xyz",
            b"0123456789abcdef!",
        ];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for secret in secrets {
            for offset in 0..3 {
                let core = aligned(secret, offset, &STANDARD_NO_PAD).core;
                let Some(core) = core else { continue };
                for _ in 0..50 {
                    let mut stream: Vec<u8> = (0..offset + 3 * (rng as usize % 3))
                        .map(|_| xorshift(&mut rng))
                        .collect();
                    stream.extend_from_slice(secret);
                    let suffix_len = (xorshift(&mut rng) % 5) as usize;
                    stream.extend((0..suffix_len).map(|_| xorshift(&mut rng)));
                    let enc = STANDARD.encode(&stream);
                    assert!(
                        enc.as_bytes()
                            .windows(core.len())
                            .any(|w| w == core.as_slice()),
                        "core {:?} missing from {enc} (offset {offset})",
                        String::from_utf8_lossy(&core)
                    );
                }
            }
        }
    }

    #[test]
    fn cores_span_exactly_the_secret_only_characters() {
        // "abc" at offset 1: bits 8..32 → characters 2..5 (chars 0,1 touch the prefix).
        let a = aligned(b"abc", 1, &STANDARD_NO_PAD);
        let full = STANDARD_NO_PAD.encode(b"\0abc");
        assert_eq!(a.core.as_deref(), Some(&full.as_bytes()[2..5]));
        assert_eq!(a.tail.as_deref(), Some(&full.as_bytes()[2..]));
        let padded = aligned(b"abc", 1, &STANDARD);
        let full_padded = STANDARD.encode(b"\0abc");
        assert_eq!(padded.tail.as_deref(), Some(&full_padded.as_bytes()[2..]));
    }

    #[test]
    fn short_derived_forms_are_dropped_but_raw_is_kept() {
        let p = patterns(b"ab");
        assert!(p.iter().any(|x| x == b"ab"));
        assert!(
            p.iter().all(|x| x == b"ab" || x.len() >= MIN_DERIVED_LEN),
            "{p:?}"
        );
        // Hex and single base64 of two bytes are only 4 characters.
        assert!(!p.iter().any(|x| x == b"6162" || x == b"YWI="), "{p:?}");
        // Double base64 of the same two bytes is long enough to keep.
        assert!(p.iter().any(|x| x == b"WVdJPQ=="), "{p:?}");
    }

    #[test]
    fn empty_secret_yields_nothing() {
        assert!(patterns(b"").is_empty());
    }

    #[test]
    fn url_forms_cover_case_and_plus() {
        let p = patterns(b"p@ss w/rd");
        for want in [
            &b"p%40ss%20w%2Frd"[..],
            b"p%40ss%20w%2frd",
            b"p%40ss+w%2Frd",
            b"p%40ss+w%2frd",
            b"p%40ss%20w/rd",
            b"p%40ss+w/rd",
        ] {
            assert!(
                p.iter().any(|x| x == want),
                "missing {}",
                String::from_utf8_lossy(want)
            );
        }
    }

    #[test]
    fn lines_of_multiline_secret_are_trimmed_and_filtered() {
        let p = patterns(b"first-line-long\r\nshort\r\n\rsecond-line-long\r");
        assert!(p.iter().any(|x| x == b"first-line-long"));
        assert!(p.iter().any(|x| x == b"second-line-long"));
        assert!(!p.iter().any(|x| x == b"short"));
    }

    #[test]
    fn patterns_are_deduplicated() {
        let p = patterns(b"abcdefgh");
        let unique: BTreeSet<_> = p.iter().collect();
        assert_eq!(unique.len(), p.len());
    }
}
