//! Redaction of secret values from captured step output.
//!
//! A [`Redactor`] is built once per job from the secret values the job can
//! see, and every byte of output that leaves the engine (live log stream,
//! stored logs, error messages) is passed through it. Each occurrence of a
//! secret is replaced by [`MASK`].
//!
//! # What is masked
//!
//! For every non-empty secret value:
//!
//! - the raw bytes, and for a multi-line secret the same text with its line
//!   ends changed: CRLF printed as LF, and every LF printed as CRLF (as a
//!   Windows tool or a terminal's ONLCR prints it; CR CR LF when the secret
//!   already had CRLF). Like the raw value these are masked at any length;
//! - base64, in the standard and URL-safe alphabets, padded and unpadded, at
//!   all three byte alignments (see below);
//! - double base64: the base64 of the secret's standard base64 (and of its
//!   alignment cores, and of its 76-column LF-wrapped encoding), again at
//!   all three alignments of the outer encoding;
//! - standard base64 wrapped into lines of 76 columns (GNU coreutils and
//!   busybox `base64`, Python's `base64.encodebytes`, MIME) or 64 columns
//!   (PEM, `openssl base64`), with LF or CRLF line ends (see below);
//! - lowercase and uppercase hex;
//! - percent-encoding with upper- and lowercase escapes, with `%20` or `+` for
//!   space, under the escape sets of common encoders (RFC 3986 strict,
//!   Python's `quote`, JavaScript's `encodeURIComponent`, PHP's `urlencode`,
//!   Java's `URLEncoder`, everything but letters and digits), and with every
//!   byte escaped, letters and digits included (`%5a%71...`; there the first
//!   `%` is left in front of the mask, so that output ending in `%` is never
//!   held back as the possible start of a secret);
//! - for a secret that is valid UTF-8, its body inside a JSON string literal:
//!   `"` and `\` escaped, control characters as `\n`, `\r`, `\t`, `\b`,
//!   `\f` or `\u00XX`, in every combination of `/` as `\/` (PHP), all of
//!   non-ASCII and DEL as `\uXXXX` with surrogate pairs (Python's and PHP's
//!   default), `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX` (Go's default), and
//!   upper-case hex in `\u` escapes (Jackson); also each of these escaped a
//!   second time, for JSON inside a JSON string; also for the line-end
//!   variants above;
//! - for multi-line secrets such as PEM keys, each line of at least 8 bytes
//!   (ignoring `\r`), since tools often print them one line at a time.
//!
//! Derived forms shorter than 6 bytes are not masked: they occur by chance in
//! ordinary output and would protect only a few bits. The raw value is always
//! masked. When two forms start at the same place the longest wins, so a
//! padded encoding is masked whole rather than leaving its `=` behind.
//!
//! # Wrapped base64
//!
//! An encoder that wraps counts columns from the start of its output, so
//! where the line breaks fall among the secret's characters depends on where
//! the secret sits in the encoded data: its "lead", the offset from the start
//! of a line's 57 (or 48) input bytes. Lines always start a 3-byte group, so
//! the lead also fixes the alignment. Masked, for both widths and both line
//! ends:
//!
//! - lead 0, i.e. the secret starts the data or a line
//!   (`printf %s "$SECRET" | base64`): the whole wrapped encoding, as one
//!   mask; also for double base64 with the outer layer wrapped
//!   (`base64 | base64`, `base64 -w0 | base64`);
//! - any lead at which the secret spans two lines: the whole, as one mask;
//! - longer spans at any other lead, line by line: the first partial line
//!   from the secret's first character to the line break (at least 6
//!   characters; the line break itself is kept), every full line (the
//!   encoding of any 57 or 48 consecutive secret bytes), and the last
//!   partial line together with the full line before it, however short.
//!
//! Characters that mix secret bits with neighbouring bytes may survive at
//! either edge, as in unwrapped streams: with `echo "$SECRET" | base64` the
//! character that also encodes echo's newline, and what follows, are left.
//! One exception: if a secret repeats a full line's worth of its own bytes
//! (57 or 48) and the next line's worth after that repetition begins like
//! the secret's last partial line, that last partial line is not masked at
//! leads other than 0 (masking it could take the start of the full line
//! instead). Full lines are masked regardless.
//!
//! # Why alignments matter
//!
//! Base64 turns each 3-byte group into 4 characters. A secret that is encoded
//! on its own starts a group, but a secret embedded in a larger blob (a JSON
//! document, an environment dump, a process's memory) may start 0, 1 or 2
//! bytes into a group, and each offset produces a completely different
//! character string. The characters at either edge also mix in bits of the
//! neighbouring bytes, so for each offset only a "core" of characters is the
//! same whatever surrounds the secret; those cores are what is matched.
//!
//! This is not hypothetical: in the March 2025 compromise of the
//! `tj-actions/changed-files` GitHub Action, the injected code scraped the
//! secrets out of the runner process's memory and printed them into the
//! build log base64-encoded twice. Each secret sat at an arbitrary offset of
//! the encoded text, after its name and some JSON punctuation, so the runner's
//! masking of the plain value caught nothing and the secrets were readable in
//! the public logs of every affected repository.
//!
//! # Streaming
//!
//! [`StreamRedactor`] masks output that arrives in arbitrary chunks and gives
//! the same bytes as redacting the concatenation in one go, whatever the chunk
//! boundaries, including a secret split over many chunks or fed one byte at a
//! time. It holds back only the longest suffix of the pending data that is a
//! proper prefix of some pattern, so ordinary output (say, a line ending in
//! `\n` with no partial secret at its end) is emitted immediately rather than
//! delayed by the length of the longest pattern.
//!
//! Output is never retracted, so a match must never be able to start in bytes
//! already emitted. Let `h` be where the held suffix begins. Any occurrence of
//! a pattern starting before `h` lies wholly inside the pending data: if it
//! ran past the end, the pending data from its start would be a proper prefix
//! of that pattern, longer than the held suffix, contradicting its choice.
//! So every match starting before `h`, and which of them leftmost-longest
//! selects, is already decided. Emission stops at `h`, or at the end of the
//! last match that starts before `h` if that is later; anything starting
//! inside that match is excluded by the non-overlapping rule in one-shot
//! redaction too. The next search resumes exactly where one-shot redaction
//! would, because matching has no look-behind.
//!
//! # Limits
//!
//! Forms not listed above are not recognised: among others base64 wrapped at
//! other widths or in the URL-safe alphabet, wrapped double base64 with the
//! secret not at lead 0 of the outer layer, JSON escaping of invalid UTF-8
//! or of another encoding, shell quoting, and other encodings. Redaction is
//! a last line of defence and not a substitute for keeping secrets away from
//! untrusted steps.

mod patterns;
mod prefix;

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::patterns::PatternSet;
use crate::prefix::PrefixTrie;

/// What every occurrence of a secret is replaced by.
pub const MASK: &str = "***";

enum Matcher {
    /// No secrets: everything passes through untouched.
    Nothing,
    Automaton {
        ac: AhoCorasick,
        /// Over the same patterns; only streaming needs it.
        prefixes: PrefixTrie,
        /// Per pattern, how many of its final bytes (a line break) are
        /// written out after the mask instead of being masked.
        kept: Box<[u8]>,
    },
    /// The automaton could not be built (only possible with absurdly large
    /// secret sets). Output is replaced wholesale rather than leaked.
    FailClosed,
}

struct Inner {
    matcher: Matcher,
    pattern_count: usize,
}

/// Masks secret values, and their common encodings, in output.
///
/// Cloning is cheap: the compiled patterns are shared.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

impl Redactor {
    /// Builds a redactor for the given secret values. Empty values are
    /// ignored.
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut set = PatternSet::default();
        for secret in secrets {
            set.add_secret(secret.as_ref());
        }
        let (patterns, kept) = set.into_parts();

        let matcher = if patterns.is_empty() {
            Matcher::Nothing
        } else {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns);
            let prefixes = PrefixTrie::new(patterns.iter().map(Vec::as_slice));
            match (ac, prefixes) {
                (Ok(ac), Some(prefixes)) => Matcher::Automaton {
                    ac,
                    prefixes,
                    kept: kept.into_boxed_slice(),
                },
                _ => Matcher::FailClosed,
            }
        };

        Redactor {
            inner: Arc::new(Inner {
                pattern_count: patterns.len(),
                matcher,
            }),
        }
    }

    /// A redactor that masks nothing.
    pub fn empty() -> Redactor {
        Redactor::new(std::iter::empty::<&[u8]>())
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.inner.pattern_count == 0
    }

    /// Masks every secret occurrence in `input`.
    pub fn redact(&self, input: &[u8]) -> Vec<u8> {
        match &self.inner.matcher {
            Matcher::Nothing => input.to_vec(),
            Matcher::FailClosed => fail_closed(input),
            Matcher::Automaton { ac, kept, .. } => {
                let mut out = Vec::with_capacity(input.len());
                let end = mask_matches(ac, kept, input, input.len(), &mut out);
                out.extend_from_slice(&input[end..]);
                out
            }
        }
    }

    /// Masks every secret occurrence in `input`, keeping the result valid
    /// UTF-8.
    ///
    /// A secret given as raw bytes may begin or end inside a multi-byte
    /// character; the mask then swallows that whole character instead of
    /// leaving half of it behind, so all text outside a secret is returned
    /// unchanged.
    pub fn redact_str(&self, input: &str) -> String {
        let (ac, kept) = match &self.inner.matcher {
            Matcher::Nothing => return input.to_owned(),
            Matcher::FailClosed => {
                return if input.is_empty() {
                    String::new()
                } else {
                    MASK.to_owned()
                }
            }
            Matcher::Automaton { ac, kept, .. } => (ac, kept),
        };
        let mut out = String::with_capacity(input.len());
        let mut last = 0;
        for m in ac.find_iter(input) {
            let start = floor_char_boundary(input, m.start()).max(last);
            let end = ceil_char_boundary(input, m.end());
            if let Some(kept) = input.get(last..start) {
                out.push_str(kept);
            }
            // A match lying wholly inside a character the previous mask was
            // widened over has nothing left to hide; a second mask would only
            // mislead about how many secrets were there.
            if end > last {
                out.push_str(MASK);
                // A kept tail is an ASCII line break: `m.end()` is then a
                // character boundary, and the tail valid text on its own.
                if let Some(tail) = input.get(m.end() - kept_len(kept, &m)..m.end()) {
                    out.push_str(tail);
                }
                last = end;
            }
        }
        if let Some(rest) = input.get(last..) {
            out.push_str(rest);
        }
        out
    }

    /// Starts redacting a chunked stream.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            pending: Vec::new(),
        }
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::empty()
    }
}

impl fmt::Debug for Redactor {
    // Derived Debug would print the patterns, i.e. the secrets themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.inner.pattern_count)
            .finish_non_exhaustive()
    }
}

fn fail_closed(input: &[u8]) -> Vec<u8> {
    if input.is_empty() {
        Vec::new()
    } else {
        MASK.as_bytes().to_vec()
    }
}

/// Appends `input` to `out` with matches masked, up to the last match that
/// starts before `limit`. Returns where the caller should continue: the end
/// of that match, or 0 if there was none. Bytes from there on are not copied.
fn mask_matches(
    ac: &AhoCorasick,
    kept: &[u8],
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> usize {
    let mut last = 0;
    for m in ac.find_iter(input) {
        if m.start() >= limit {
            break;
        }
        out.extend_from_slice(&input[last..m.start()]);
        out.extend_from_slice(MASK.as_bytes());
        out.extend_from_slice(&input[m.end() - kept_len(kept, &m)..m.end()]);
        last = m.end();
    }
    last
}

/// How many final bytes of match `m` stay visible after its mask. Patterns
/// with a kept tail are always longer than it.
fn kept_len(kept: &[u8], m: &aho_corasick::Match) -> usize {
    kept.get(m.pattern().as_usize())
        .map_or(0, |&k| usize::from(k).min(m.len()))
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Redacts output that arrives in chunks; see the crate docs for the
/// guarantee.
pub struct StreamRedactor {
    redactor: Redactor,
    /// Never more than the longest pattern minus one byte.
    pending: Vec<u8>,
}

impl StreamRedactor {
    /// Feed the next chunk; returns the bytes that are now safe to emit
    /// (already redacted).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let inner = &*self.redactor.inner;
        let (ac, prefixes, kept) = match &inner.matcher {
            Matcher::Nothing => return chunk.to_vec(),
            Matcher::FailClosed => return fail_closed(chunk),
            Matcher::Automaton { ac, prefixes, kept } => (ac, prefixes, kept),
        };

        self.pending.extend_from_slice(chunk);
        let held = prefixes.held_suffix_len(&self.pending);
        let safe = self.pending.len() - held;

        let mut out = Vec::with_capacity(safe + MASK.len());
        let match_end = mask_matches(ac, kept, &self.pending, safe, &mut out);
        let cut = match_end.max(safe);
        out.extend_from_slice(&self.pending[match_end..cut]);
        self.pending.drain(..cut);
        out
    }

    /// End of stream: returns the redacted remainder.
    pub fn finish(self) -> Vec<u8> {
        self.redactor.redact(&self.pending)
    }
}

impl fmt::Debug for StreamRedactor {
    // The held bytes are, by construction, the start of a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRedactor")
            .field("redactor", &self.redactor)
            .field("held_bytes", &self.pending.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_all(r: &Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn masks_raw_value() {
        let r = Redactor::new(["hunter2"]);
        assert_eq!(r.redact(b"pw=hunter2;"), b"pw=***;");
    }

    #[test]
    fn empty_redactor_is_identity() {
        let r = Redactor::empty();
        assert!(r.is_empty());
        assert_eq!(r.redact(b"\xffabc"), b"\xffabc");
        assert_eq!(stream_all(&r, &[b"a", b"\xff"]), b"a\xff");
        assert!(Redactor::new([""]).is_empty());
        assert!(!Redactor::new(["x"]).is_empty());
    }

    #[test]
    fn longest_match_wins() {
        // The padded form extends the unpadded one; leftmost-first would
        // leave "==" behind.
        let r = Redactor::new(["abcd"]);
        assert_eq!(r.redact(b"[YWJjZA==]"), b"[***]");
    }

    #[test]
    fn fail_closed_masks_everything() {
        let r = Redactor {
            inner: Arc::new(Inner {
                matcher: Matcher::FailClosed,
                pattern_count: 1,
            }),
        };
        assert_eq!(r.redact(b"anything"), MASK.as_bytes());
        assert_eq!(r.redact(b""), b"");
        assert_eq!(r.redact_str("anything"), MASK);
        let mut s = r.stream();
        assert_eq!(s.push(b"anything"), MASK.as_bytes());
        assert_eq!(s.finish(), b"");
    }

    #[test]
    fn redact_str_widens_to_char_boundaries() {
        // "é" is C3 A9; a secret ending in C3 would otherwise leave a lone A9.
        let r = Redactor::new([&b"xy\xc3"[..]]);
        assert_eq!(r.redact_str("axyéb"), "a***b");
        assert_eq!(r.redact_str("axyzb"), "axyzb");
        // Two matches that split one character: both are masked, as in
        // `redact`, and no fragment of the character survives between them.
        let r = Redactor::new([&b"a\xc3"[..], &b"\xa9b"[..]]);
        assert_eq!(r.redact(b"xa\xc3\xa9bx"), b"x******x");
        assert_eq!(r.redact_str("xaébx"), "x******x");
        // A match wholly inside a character already swallowed adds no mask.
        let r = Redactor::new([&b"a\xe2"[..], &b"\x82"[..]]);
        assert_eq!(r.redact_str("xa€x"), "x***x");
    }

    #[test]
    fn held_bytes_are_released_when_the_prefix_dies() {
        let r = Redactor::new(["secret-value"]);
        let mut s = r.stream();
        assert_eq!(s.push(b"line one\n"), b"line one\n");
        assert_eq!(s.push(b"a secr"), b"a ");
        assert_eq!(s.push(b"ecy\n"), b"secrecy\n");
        assert_eq!(s.push(b"x secret-val"), b"x ");
        assert_eq!(s.push(b"ue!"), b"***!");
        assert_eq!(s.finish(), b"");
    }

    #[test]
    fn match_running_past_hold_point_is_emitted_whole() {
        // After "hello", "lo" is held as a prefix of "lowkey", yet the match
        // "hello" starts before it. One-shot redaction masks "hello" and
        // leaves "wkey", so streaming must too: it may not hold "lo" back
        // and later mask "lowkey" across the boundary of an emitted mask.
        let r = Redactor::new(["hello", "lowkey"]);
        assert_eq!(r.redact(b"hellowkey"), b"***wkey");
        let mut s = r.stream();
        assert_eq!(s.push(b"hello"), b"***");
        assert_eq!(s.push(b"wkey"), b"wkey");
        assert_eq!(s.finish(), b"");
    }

    #[test]
    fn later_longer_candidate_does_not_reach_back() {
        // "abcX" keeps "abc" pending; when it fails, "bcdefg" starting inside
        // the held bytes must still be found.
        let r = Redactor::new(["abcX", "bcdefg"]);
        let mut s = r.stream();
        assert_eq!(s.push(b"abc"), b"");
        assert_eq!(s.push(b"defg"), b"a***");
        assert_eq!(s.finish(), b"");
    }

    #[test]
    fn debug_hides_secrets() {
        let r = Redactor::new(["hunter2-supersecret"]);
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("patterns"), "{dbg}");
        let mut s = r.stream();
        let _ = s.push(b"hunter2-super");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("held_bytes: 13"), "{dbg}");
    }

    #[test]
    fn is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        fn check_send<T: Send>() {}
        check::<Redactor>();
        check_send::<StreamRedactor>();
    }
}
