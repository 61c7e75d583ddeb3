//! Derivation of the byte patterns that stand for one secret value.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
/// PHP's `urlencode` escapes `~` too.
const URL_PHP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');
/// Java's `URLEncoder` escapes `~` but keeps `*`.
const URL_JAVA: &AsciiSet = &URL_PHP.remove(b'*');
/// Some encoders escape everything that is not alphanumeric.
const URL_ALL: &AsciiSet = NON_ALPHANUMERIC;

const URL_SETS: [&AsciiSet; 6] = [
    URL_STRICT,
    URL_PATH,
    URL_COMPONENT,
    URL_PHP,
    URL_JAVA,
    URL_ALL,
];

/// Widths base64 encoders wrap their output at: 76 (MIME: GNU coreutils and
/// busybox `base64`, Python's `base64.encodebytes`, Java's MIME encoder) and
/// 64 (PEM: `openssl base64`). Both are multiples of 4, so every line starts
/// a 3-byte group.
const WRAP_WIDTHS: [usize; 2] = [76, 64];

const LINE_ENDS: [&[u8]; 2] = [b"\n", b"\r\n"];

/// Collects patterns, deduplicated and with short derived forms dropped.
#[derive(Default)]
pub(crate) struct PatternSet {
    /// Each pattern, with how many of its final bytes are written out after
    /// the mask instead of being masked: the line break that anchors the
    /// first partial line of wrapped base64 to where the encoder broke it.
    map: BTreeMap<Vec<u8>, u8>,
}

impl PatternSet {
    /// Adds every form of `secret`. Empty secrets are ignored: an empty
    /// pattern would match between every pair of bytes.
    pub(crate) fn add_secret(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        // The raw value and its line-end variants are masked at any length.
        let texts = text_variants(secret);
        for text in &texts {
            self.insert(text.clone(), 0);
        }

        for form in derived_forms(secret) {
            self.add_derived(form);
        }
        self.add_wrapped_base64(secret);
        for text in &texts {
            for form in json_forms(text) {
                self.add_derived(form);
            }
        }

        if secret.contains(&b'\n') {
            for line in secret.split(|b| *b == b'\n') {
                let line = trim_cr(line);
                if line.len() >= MIN_LINE_LEN {
                    self.insert(line.to_vec(), 0);
                }
            }
        }
    }

    fn add_derived(&mut self, form: Vec<u8>) {
        if form.len() >= MIN_DERIVED_LEN {
            self.insert(form, 0);
        }
    }

    fn add_derived_opt(&mut self, form: Option<Vec<u8>>) {
        if let Some(form) = form {
            self.add_derived(form);
        }
    }

    /// When the same bytes arrive with different kept tails, masking more
    /// wins.
    fn insert(&mut self, pattern: Vec<u8>, kept: u8) {
        self.map
            .entry(pattern)
            .and_modify(|k| *k = (*k).min(kept))
            .or_insert(kept);
    }

    /// Line-wrapped standard base64, the way `base64`, `openssl base64` and
    /// MIME encoders print it.
    ///
    /// Wrapping breaks the encoding every 76 or 64 characters, counted from
    /// the start of the encoded output, so where the breaks fall inside the
    /// secret's characters depends on where the secret sits in the data:
    /// `lead`, its offset from the start of a line's bytes. Every line starts
    /// a 3-byte group, so the lead fixes the alignment too. Covered:
    ///
    /// - lead 0 (the secret starts the data or a line, as in
    ///   `printf %s "$SECRET" | base64`): the whole wrapped core, and the
    ///   padded encoding for when the secret ends the data;
    /// - the same for double base64 (`base64 | base64`), the inner layer
    ///   unwrapped or wrapped at 76 columns;
    /// - any lead at which the secret spans two lines: the same, whole;
    /// - longer spans at any lead, line by line: the first partial line (a
    ///   prefix of an alignment core, followed by the line break, which is
    ///   kept); each full line (the encoding of any 57 or 48 consecutive
    ///   secret bytes); and the last partial line (the encoding from a group
    ///   boundary of the secret's last bytes), together with the full line
    ///   before it.
    fn add_wrapped_base64(&mut self, secret: &[u8]) {
        let enc = STANDARD.encode(secret).into_bytes();
        let inner_wrapped = wrap(&enc, WRAP_WIDTHS[0], b"\n");
        for width in WRAP_WIDTHS {
            for eol in LINE_ENDS {
                let line_bytes = width / 4 * 3;
                // Beyond two lines' worth of bytes every lead but 0 spans
                // three lines or more.
                let leads = if secret.len() > 2 * line_bytes {
                    1
                } else {
                    line_bytes
                };
                for lead in 0..leads {
                    let w = wrapped_at(secret, lead, width, eol);
                    if lead == 0 || w.lines == 2 {
                        self.add_derived_opt(w.core);
                        self.add_derived_opt(w.tail);
                    }
                }
                for inner in [&enc, &inner_wrapped] {
                    let w = wrapped_at(inner, 0, width, eol);
                    self.add_derived_opt(w.core);
                    self.add_derived_opt(w.tail);
                }
            }
        }

        for width in WRAP_WIDTHS {
            for window in secret.windows(width / 4 * 3) {
                self.add_derived(STANDARD.encode(window).into_bytes());
            }
        }

        for offset in 0..3 {
            let Some(core) = aligned(secret, offset, &STANDARD_NO_PAD).core else {
                continue;
            };
            // Where the core starts within its 4-character group.
            let first = (8 * offset).div_ceil(6);
            for width in WRAP_WIDTHS {
                for column in (first..width).step_by(4).filter(|&c| c > 0) {
                    let len = width - column;
                    if len < MIN_DERIVED_LEN || len >= core.len() {
                        continue;
                    }
                    for eol in LINE_ENDS {
                        self.insert([&core[..len], eol].concat(), eol.len() as u8);
                    }
                }
            }
        }

        // The last partial line is anchored by the full line before it, so
        // it is matched together with that line, however short it is; a
        // line break of its own in front would make every ordinary line's
        // final `\n` the possible start of a pattern, held back in streams.
        for width in WRAP_WIDTHS {
            let line_bytes = width / 4 * 3;
            let follows = full_lines_followed(secret, line_bytes);
            for tail_len in 1..line_bytes {
                let Some(full_start) = secret.len().checked_sub(tail_len + line_bytes) else {
                    break;
                };
                let (full, last) = secret[full_start..].split_at(line_bytes);
                // If the same full line also occurs followed by another full
                // line of the secret, a tail that begins that next line would
                // win there by length and leave the rest of the line bare.
                let next_lines: Vec<Vec<u8>> = follows
                    .get(full)
                    .into_iter()
                    .flatten()
                    .map(|next| STANDARD.encode(next).into_bytes())
                    .collect();
                let full = STANDARD.encode(full).into_bytes();
                let forms = [
                    aligned(last, 0, &STANDARD_NO_PAD).core,
                    aligned(last, 0, &STANDARD).tail,
                ];
                for form in forms.into_iter().flatten() {
                    if next_lines.iter().any(|next| next.starts_with(&form)) {
                        continue;
                    }
                    for eol in LINE_ENDS {
                        self.add_derived([&full, eol, &form].concat());
                    }
                }
            }
        }
    }

    /// The patterns, and per pattern how many final bytes stay visible.
    pub(crate) fn into_parts(self) -> (Vec<Vec<u8>>, Vec<u8>) {
        self.map.into_iter().unzip()
    }
}

/// For each run of `line_bytes` secret bytes that a further such run follows
/// (a full line of wrapped base64 with a full line after it), those next
/// runs.
fn full_lines_followed(secret: &[u8], line_bytes: usize) -> HashMap<&[u8], Vec<&[u8]>> {
    let mut map: HashMap<&[u8], Vec<&[u8]>> = HashMap::new();
    for start in 0..(secret.len() + 1).saturating_sub(2 * line_bytes) {
        let (line, rest) = secret[start..].split_at(line_bytes);
        map.entry(line).or_default().push(&rest[..line_bytes]);
    }
    map
}

/// The characters of `data` encoded `lead` bytes into a line of wrapped
/// base64, with the line breaks the encoder puts among them.
struct Wrapped {
    /// Only the characters computed from `data` alone.
    core: Option<Vec<u8>>,
    /// From the first of those to the end with padding, for when `data` ends
    /// the encoded stream.
    tail: Option<Vec<u8>>,
    /// How many lines the core spans.
    lines: usize,
}

fn wrapped_at(data: &[u8], lead: usize, width: usize, eol: &[u8]) -> Wrapped {
    let mut shifted = vec![0u8; lead];
    shifted.extend_from_slice(data);
    let text = wrap(STANDARD.encode(&shifted).as_bytes(), width, eol);
    let start = (8 * lead).div_ceil(6);
    let end = 8 * (lead + data.len()) / 6;
    // Position in `text` of encoded character `i`.
    let at = |i: usize| i + i / width * eol.len();
    if end <= start {
        return Wrapped {
            core: None,
            tail: None,
            lines: 0,
        };
    }
    Wrapped {
        core: Some(text[at(start)..at(end - 1) + 1].to_vec()),
        tail: Some(text[at(start)..].to_vec()),
        lines: (end - 1) / width - start / width + 1,
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

fn wrap(enc: &[u8], width: usize, eol: &[u8]) -> Vec<u8> {
    enc.chunks(width).collect::<Vec<_>>().join(eol)
}

/// The secret as stored, plus how a multi-line secret looks with its line
/// ends changed: CRLF printed as LF, and every LF printed as CRLF (a
/// terminal's ONLCR does that even after an existing CR).
fn text_variants(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec()];
    if !secret.contains(&b'\n') {
        return out;
    }
    let mut lf = Vec::with_capacity(secret.len());
    for (i, &b) in secret.iter().enumerate() {
        if !(b == b'\r' && secret.get(i + 1) == Some(&b'\n')) {
            lf.push(b);
        }
    }
    for variant in [onlcr(secret), onlcr(&lf), lf] {
        if !out.contains(&variant) {
            out.push(variant);
        }
    }
    out
}

fn onlcr(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 16);
    for &b in text {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// How a JSON encoder writes a string's characters.
#[derive(Clone, Copy)]
struct JsonStyle {
    /// `/` as `\/` (PHP, Apache Commons).
    slash: bool,
    /// Everything outside printable ASCII as `\uXXXX` (Python and PHP by
    /// default), astral characters as surrogate pairs.
    ascii: bool,
    /// `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX` (Go by default).
    html: bool,
    /// Upper-case hex in `\u` escapes (Jackson, Apache Commons).
    upper: bool,
}

/// The secret inside a JSON string literal, in every style, and escaped
/// twice (a JSON document inside a JSON string). A JSON string holds text,
/// so invalid UTF-8 has no JSON form.
fn json_forms(text: &[u8]) -> Vec<Vec<u8>> {
    let Ok(s) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for bits in 0..16u8 {
        let style = JsonStyle {
            slash: bits & 1 != 0,
            ascii: bits & 2 != 0,
            html: bits & 4 != 0,
            upper: bits & 8 != 0,
        };
        let once = json_escape(s, style);
        out.insert(json_escape(&once, style));
        out.insert(once);
    }
    out.into_iter().map(String::into_bytes).collect()
}

fn json_escape(s: &str, style: JsonStyle) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    let unicode = |out: &mut String, c: char| {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            let hex = if style.upper {
                format!("\\u{unit:04X}")
            } else {
                format!("\\u{unit:04x}")
            };
            out.push_str(&hex);
        }
    };
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if style.slash => out.push_str("\\/"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style.html => unicode(&mut out, c),
            c if c < ' ' || (style.ascii && c > '~') => unicode(&mut out, c),
            c => out.push(c),
        }
    }
    out
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
    // Some encoders escape every byte, letters and digits included. The
    // pattern starts after the first `%`, which stays visible: a pattern
    // starting with `%` would make every output ending in `%` (a progress
    // counter, say) the possible start of a secret, held back in streams.
    // The hex digits it starts with already begin the hex form.
    for hex in [hex::encode(secret), hex::encode_upper(secret)] {
        let mut every = Vec::with_capacity(3 * secret.len());
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            if i > 0 {
                every.push(b'%');
            }
            every.extend_from_slice(pair);
        }
        out.push(every);
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
/// used as the inner layer of double encoding: its encoding (also wrapped at
/// 76 columns, as plain `base64` prints it) and its alignment cores.
fn base64_inner_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let enc = STANDARD.encode(secret).into_bytes();
    let wrapped = wrap(&enc, WRAP_WIDTHS[0], b"\n");
    let mut inner = vec![enc];
    if wrapped != inner[0] {
        inner.push(wrapped);
    }
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
        set.into_parts().0
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
    fn wrapped_at_places_line_breaks_like_the_encoder() {
        // "hello world!" is 16 characters: two lines of 8 from lead 0.
        let w = wrapped_at(b"hello world!", 0, 8, b"\n");
        assert_eq!(w.core.as_deref(), Some(&b"aGVsbG8g\nd29ybGQh"[..]));
        assert_eq!(w.lines, 2);
        // One byte in, "\0hello world!" is "AGhlbGxv\nIHdvcmxk\nIQ==": the
        // first two characters and the last "Q" mix in other bits.
        let w = wrapped_at(b"hello world!", 1, 8, b"\r\n");
        assert_eq!(w.core.as_deref(), Some(&b"hlbGxv\r\nIHdvcmxk\r\nI"[..]));
        assert_eq!(w.tail.as_deref(), Some(&b"hlbGxv\r\nIHdvcmxk\r\nIQ=="[..]));
        assert_eq!(w.lines, 3);
    }

    #[test]
    fn line_end_variants() {
        assert_eq!(text_variants(b"no newline"), [b"no newline".to_vec()]);
        let v = text_variants(b"a\nb\r\nc");
        for want in [
            &b"a\nb\r\nc"[..],
            b"a\r\nb\r\r\nc",
            b"a\r\nb\r\nc",
            b"a\nb\nc",
        ] {
            assert!(v.iter().any(|x| x == want), "{want:?} missing from {v:?}");
        }
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn json_and_every_byte_forms() {
        let p = patterns("a\"b\\c/d\u{1}é".as_bytes());
        for want in [
            r#"a\"b\\c/d\u0001é"#,
            r#"a\"b\\c\/d\u0001\u00e9"#,
            r#"a\"b\\c/d\u0001\u00E9"#,
            r#"a\\\"b\\\\c/d\\u0001é"#,
        ] {
            assert!(p.iter().any(|x| x == want.as_bytes()), "missing {want}");
        }
        // Every byte escaped, from after the first `%`.
        let p = patterns(b"Zq7");
        assert!(p.iter().any(|x| x == b"5a%71%37"), "{p:?}");
        assert!(p.iter().any(|x| x == b"5A%71%37"), "{p:?}");
    }

    #[test]
    fn patterns_are_deduplicated() {
        let p = patterns(b"abcdefgh");
        let unique: BTreeSet<_> = p.iter().collect();
        assert_eq!(unique.len(), p.len());
    }
}
