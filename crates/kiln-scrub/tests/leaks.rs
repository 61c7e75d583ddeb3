//! Forms of a secret that used to leak (issue 11): base64 wrapped into lines
//! the way `base64`, `openssl base64` and MIME encoders print it, percent-
//! encoding that escapes every byte, JSON string escaping, and multi-line
//! secrets printed with CRLF line ends.
//!
//! Expected forms are built here, independently of the crate's derivation,
//! and checked against the real tools where they are installed (GNU
//! coreutils `base64`, `openssl base64`) or against known answers produced
//! by Python's `json` and `urllib.parse`, Node's `JSON.stringify`, Go's
//! `encoding/json` and PHP's `json_encode`.

mod common;

use std::io::Write;
use std::ops::Range;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use kiln_scrub::{Redactor, MASK};
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

const LF: &[u8] = b"\n";
const CRLF: &[u8] = b"\r\n";
const EOLS: [(&str, &[u8]); 2] = [("LF", LF), ("CRLF", CRLF)];
/// `base64` / MIME line width, and PEM / `openssl base64` line width.
const WIDTHS: [usize; 2] = [76, 64];

// ---------------------------------------------------------------------------
// Secrets

fn printable(rng: &mut Rng, n: usize) -> Vec<u8> {
    const POOL: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!@#$%^&()+=/";
    (0..n).map(|_| POOL[rng.below(POOL.len())]).collect()
}

/// A PEM-shaped private key. 1203 body bytes make 1604 base64 characters,
/// so the last body line is only 4 characters long: shorter than the
/// per-line minimum, it is only protected when the key is matched whole.
fn pem_like() -> Vec<u8> {
    let mut rng = Rng(0x9e3f_0001);
    let body = STANDARD.encode(rng.bytes(1203));
    let mut pem = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
    for line in body.as_bytes().chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END PRIVATE KEY-----\n");
    pem
}

/// `"`, `\`, `/`, a tab, a newline, HTML-special characters and non-ASCII.
fn hostile() -> Vec<u8> {
    "Zq7\"Kx\\wP/m4\tTz\n8-y&e<é>Lp".as_bytes().to_vec()
}

/// Control characters JSON encoders escape in different ways, DEL, and a
/// character outside the BMP (a surrogate pair in `\u` form).
fn controls() -> Vec<u8> {
    "ctl\u{1}\u{1b}\r\u{8}\u{c}\u{7f}\u{1F600}end/x"
        .as_bytes()
        .to_vec()
}

fn long_secrets() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng(0x1ea7_0011);
    vec![
        ("58 printable", printable(&mut rng, 58)),
        ("100 printable", printable(&mut rng, 100)),
        ("300 printable", printable(&mut rng, 300)),
        ("58 binary", rng.bytes(58)),
        ("100 awkward repeating", sweep_secret(100)),
        ("pem", pem_like()),
    ]
}

// ---------------------------------------------------------------------------
// Building the forms

fn wrap(enc: &[u8], width: usize, eol: &[u8]) -> Vec<u8> {
    enc.chunks(width).collect::<Vec<_>>().join(eol)
}

/// What `printf %s "$DATA" | base64 -w WIDTH` prints, with `eol` line ends
/// (width 0: no wrapping and no final line end, as `base64 -w 0`).
fn wrapped_base64(data: &[u8], width: usize, eol: &[u8]) -> Vec<u8> {
    let enc = STANDARD.encode(data).into_bytes();
    if width == 0 {
        return enc;
    }
    let mut out = wrap(&enc, width, eol);
    out.extend_from_slice(eol);
    out
}

fn with_crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in text {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn escape_every_byte(secret: &[u8], upper: bool) -> Vec<u8> {
    secret
        .iter()
        .map(|b| {
            if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect::<String>()
        .into_bytes()
}

fn lower_hex_escapes(s: &str) -> String {
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

const URL_STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const URL_PYTHON_QUOTE: &AsciiSet = &URL_STRICT.remove(b'/');
const URL_JS_COMPONENT: &AsciiSet = &URL_STRICT
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*');
/// PHP `urlencode` escapes `~` too.
const URL_PHP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');
/// Java `URLEncoder` keeps `*` as well.
const URL_JAVA: &AsciiSet = &URL_PHP.remove(b'*');

const URL_SETS: [(&str, &AsciiSet); 6] = [
    ("RFC 3986", URL_STRICT),
    ("Python quote", URL_PYTHON_QUOTE),
    ("encodeURIComponent", URL_JS_COMPONENT),
    ("PHP urlencode", URL_PHP),
    ("Java URLEncoder", URL_JAVA),
    ("non-alphanumeric", NON_ALPHANUMERIC),
];

#[derive(Clone, Copy, Debug)]
struct JsonStyle {
    /// `/` as `\/` (PHP, some Java libraries).
    slash: bool,
    /// Everything outside printable ASCII as `\uXXXX` (Python's default).
    ascii: bool,
    /// `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX` (Go's default).
    html: bool,
    /// Upper-case hex digits in `\u` escapes (Jackson, Apache Commons).
    upper: bool,
}

fn json_styles() -> Vec<JsonStyle> {
    let mut v = Vec::new();
    for bits in 0..16u8 {
        v.push(JsonStyle {
            slash: bits & 1 != 0,
            ascii: bits & 2 != 0,
            html: bits & 4 != 0,
            upper: bits & 8 != 0,
        });
    }
    v
}

/// The body of a JSON string literal holding `s`.
fn json_escape(s: &str, style: JsonStyle) -> String {
    let mut out = String::new();
    let unicode = |out: &mut String, c: char| {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            if style.upper {
                out.push_str(&format!("\\u{unit:04X}"));
            } else {
                out.push_str(&format!("\\u{unit:04x}"));
            }
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
            c if c < ' ' => unicode(&mut out, c),
            c if style.ascii && c > '~' => unicode(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Running the real tools

fn run(program: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    output.status.success().then_some(output.stdout)
}

/// GNU coreutils `base64`, or `None` where it is not installed (BSD
/// `base64` does not wrap by default, so there is nothing to compare with).
fn gnu_base64(args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let version = run("base64", &["--version"], b"")?;
    if !contains(&version, b"GNU coreutils") {
        return None;
    }
    run("base64", args, input)
}

// ---------------------------------------------------------------------------
// Checking redacted wrapped base64

/// How one byte of wrapped base64 text relates to the secret.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    /// Depends on no secret byte: must survive.
    Clean,
    /// Depends partly on the secret (or is a line break between two such
    /// characters, or a secret-only character on a line with fewer than 6 of
    /// them): may be masked.
    Touched,
    /// Computed from secret bits alone, on a line with at least 6 such
    /// characters: must be masked.
    Must,
}

/// Roles of the bytes of `wrapped_base64(data, width, eol)` when
/// `data[secret]` is the secret.
fn roles(data_len: usize, secret: Range<usize>, width: usize, eol: &[u8]) -> Vec<Role> {
    roles_with(data_len, secret, width, eol, true)
}

/// As `roles`; with `last_line_must` false, the secret-only characters of a
/// last partial line (one that starts inside the secret but is not made of
/// it alone) may survive. That is the documented limit for a secret that
/// repeats a full line's worth of bytes.
fn roles_with(
    data_len: usize,
    secret: Range<usize>,
    width: usize,
    eol: &[u8],
    last_line_must: bool,
) -> Vec<Role> {
    let enc_len = 4 * data_len.div_ceil(3);
    let data_chars = (8 * data_len).div_ceil(6);
    // (depends only on the secret, depends on it at all)
    let char_role = |i: usize| -> (bool, bool) {
        if i >= data_chars {
            // Padding follows from the length of the data; it belongs to the
            // secret's encoding when the secret ends the data.
            return (false, secret.end == data_len);
        }
        let d = deps(i);
        let d = d.start..d.end.min(data_len);
        let only = d.start >= secret.start && d.end <= secret.end;
        let touched = d.start < secret.end && secret.start < d.end;
        (only, touched)
    };
    let mut out = Vec::new();
    for line_start in (0..enc_len).step_by(width) {
        let chars = line_start..(line_start + width).min(enc_len);
        let only_count = chars.clone().filter(|&i| char_role(i).0).count();
        let last_partial = char_role(line_start).0 && only_count < width;
        let must = only_count >= 6 && (last_line_must || !last_partial);
        for i in chars.clone() {
            out.push(match char_role(i) {
                (true, _) if must => Role::Must,
                (_, true) => Role::Touched,
                _ => Role::Clean,
            });
        }
        let next = chars.end;
        let between = next < enc_len && char_role(next - 1).1 && char_role(next).1;
        let role = if between { Role::Touched } else { Role::Clean };
        out.extend(std::iter::repeat_n(role, eol.len()));
    }
    out
}

fn split_masks(out: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = out;
    while let Some(i) = rest.windows(MASK.len()).position(|w| w == MASK.as_bytes()) {
        pieces.push(&rest[..i]);
        rest = &rest[i + MASK.len()..];
    }
    pieces.push(rest);
    pieces
}

/// Checks that `out` is `text` with some non-empty runs replaced by masks,
/// such that every `Must` byte is masked and no `Clean` byte is.
fn check_wrapped(text: &[u8], roles: &[Role], out: &[u8], ctx: &str) {
    assert_eq!(text.len(), roles.len(), "{ctx}: roles");
    assert!(!contains(text, b"*"), "base64 never contains '*'");
    let map: String = roles
        .iter()
        .map(|r| match r {
            Role::Clean => '.',
            Role::Touched => 't',
            Role::Must => 'M',
        })
        .collect();
    let fail = |why: &str| -> String {
        format!(
            "{ctx}: {why}\n text: {}\nroles: {map}\n  out: {}",
            show(text).replace('\r', "␍").replace('\n', "␊"),
            show(out).replace('\r', "␍").replace('\n', "␊"),
        )
    };
    let pieces = split_masks(out);
    let n = text.len();
    // First `Must` / `Clean` byte at or after each position.
    let mut next_must = vec![n; n + 1];
    let mut next_clean = vec![n; n + 1];
    for i in (0..n).rev() {
        next_must[i] = if roles[i] == Role::Must {
            i
        } else {
            next_must[i + 1]
        };
        next_clean[i] = if roles[i] == Role::Clean {
            i
        } else {
            next_clean[i + 1]
        };
    }
    // Positions where the current piece may start.
    let mut starts = vec![false; n + 1];
    starts[0] = true;
    for (k, piece) in pieces.iter().enumerate() {
        let mut ends = vec![false; n + 1];
        for s in (0..=n).filter(|&s| starts[s]) {
            let e = s + piece.len();
            if e <= n && next_must[s] >= e && &text[s..e] == *piece {
                ends[e] = true;
            }
        }
        if k + 1 == pieces.len() {
            assert!(
                ends[n],
                "{}",
                fail("a secret-only line survives or text was altered")
            );
            return;
        }
        // A mask covers a non-empty run of bytes that may be masked.
        let mut diff = vec![0i32; n + 2];
        for e in (0..n).filter(|&e| ends[e] && next_clean[e] > e) {
            diff[e + 1] += 1;
            diff[next_clean[e] + 1] -= 1;
        }
        let mut depth = 0;
        for (i, start) in starts.iter_mut().enumerate() {
            depth += diff[i];
            *start = depth > 0;
        }
        assert!(
            starts.contains(&true),
            "{}",
            fail("a mask covers clean text")
        );
    }
}

fn check_all_offsets(
    r: &Redactor,
    name: &str,
    secret: &[u8],
    rng: &mut Rng,
    offsets: Range<usize>,
) {
    // Its 22-byte period repeats every full line's bytes further on.
    let last_line_must = !name.contains("repeating");
    for width in WIDTHS {
        for (eol_name, eol) in EOLS {
            let line_bytes = width / 4 * 3;
            for p in offsets.clone().filter(|&p| p < line_bytes + 3) {
                for q in 0..3 {
                    let mut data = rng.bytes(p);
                    data.extend_from_slice(secret);
                    data.extend(rng.bytes(q));
                    let text = wrapped_base64(&data, width, eol);
                    let out = r.redact(&text);
                    let span = p..p + secret.len();
                    let roles = roles_with(data.len(), span, width, eol, last_line_must);
                    let ctx = format!("{name}, {width} columns {eol_name}, p={p} q={q}");
                    check_wrapped(&text, &roles, &out, &ctx);
                    let as_str = std::str::from_utf8(&text).expect("base64 is ASCII");
                    assert_eq!(r.redact_str(as_str).as_bytes(), out, "{ctx}: redact_str");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Wrapped base64

/// The checker itself: it must reject a leak and an over-mask.
#[test]
fn wrapped_checker_rejects_leaks_and_over_masking() {
    let mut rng = Rng(0x1ea7_0001);
    let secret = printable(&mut rng, 100);
    let mut data = rng.bytes(30);
    data.extend_from_slice(&secret);
    data.extend(rng.bytes(30));
    let text = wrapped_base64(&data, 76, LF);
    let roles = roles(data.len(), 30..130, 76, LF);
    let good = Redactor::new([&secret]).redact(&text);
    check_wrapped(&text, &roles, &good, "good");
    let rejects = |out: Vec<u8>| {
        std::panic::catch_unwind(|| check_wrapped(&text, &roles, &out, "bad")).is_err()
    };
    assert!(rejects(text.clone()), "nothing masked");
    assert!(rejects(MASK.as_bytes().to_vec()), "everything masked");
    let mut one_line_left = good.clone();
    let first_mask = split_masks(&good)[0].len();
    one_line_left.splice(
        first_mask..first_mask + MASK.len(),
        text[first_mask..first_mask + 10].iter().copied(),
    );
    assert!(rejects(one_line_left), "part of a line unmasked");
}

#[test]
fn plain_base64_of_long_secrets_is_masked_whole() {
    for (name, secret) in long_secrets() {
        let r = Redactor::new([&secret]);
        for width in WIDTHS {
            for (eol_name, eol) in EOLS {
                let printed = wrapped_base64(&secret, width, eol);
                let ctx = format!("{name} at {width} columns, {eol_name}");
                assert!(printed.len() > width + 2 * eol.len(), "{ctx}: not wrapped");
                assert_eq!(
                    show(&r.redact(&printed)),
                    format!("{MASK}{}", show(eol)),
                    "{ctx}"
                );
                let log = [b"$ base64 key\n".as_slice(), &printed, b"$ next\n"].concat();
                let want = [b"$ base64 key\n", MASK.as_bytes(), eol, b"$ next\n"].concat();
                assert_eq!(show(&r.redact(&log)), show(&want), "{ctx}, in a log");
            }
        }
    }
}

#[test]
fn wrapped_forms_match_the_real_tools() {
    let Some(_) = gnu_base64(&[], b"probe") else {
        eprintln!("GNU coreutils base64 not installed; comparison skipped");
        return;
    };
    let has_openssl = run("openssl", &["base64"], b"probe").is_some();
    for (name, secret) in long_secrets() {
        let r = Redactor::new([&secret]);

        let default = gnu_base64(&[], &secret).expect("base64 runs");
        assert_eq!(
            show(&default),
            show(&wrapped_base64(&secret, 76, LF)),
            "{name}"
        );
        assert_eq!(show(&r.redact(&default)), format!("{MASK}\n"), "{name}");

        let pem_width = gnu_base64(&["-w", "64"], &secret).expect("base64 -w 64 runs");
        assert_eq!(pem_width, wrapped_base64(&secret, 64, LF), "{name}");
        assert_eq!(show(&r.redact(&pem_width)), format!("{MASK}\n"), "{name}");

        if has_openssl {
            let openssl = run("openssl", &["base64"], &secret).expect("openssl base64 runs");
            assert_eq!(openssl, wrapped_base64(&secret, 64, LF), "{name}");
            assert_eq!(show(&r.redact(&openssl)), format!("{MASK}\n"), "{name}");
        }

        // `echo "$SECRET" | base64`: the newline echo adds is encoded too, so
        // the last character or two mix in its bits and may survive.
        let data = [secret.as_slice(), b"\n"].concat();
        let echoed = gnu_base64(&[], &data).expect("base64 runs");
        assert_eq!(echoed, wrapped_base64(&data, 76, LF), "{name}");
        let out = r.redact(&echoed);
        assert!(out.starts_with(MASK.as_bytes()), "{name}: {}", show(&out));
        let roles = roles(data.len(), 0..secret.len(), 76, LF);
        check_wrapped(&echoed, &roles, &out, &format!("{name} echoed"));
    }
    if !has_openssl {
        eprintln!("openssl not installed; openssl base64 comparison skipped");
    }
}

/// A secret embedded in a larger blob lands at any column and any byte
/// alignment of the wrapped encoding. Every line that holds at least 6
/// characters computed from the secret alone must lose them, and nothing
/// computed from other bytes may be masked.
#[test]
fn wrapped_base64_at_every_offset_masks_every_line() {
    let mut rng = Rng(0x1ea7_0101);
    let mut secrets = long_secrets();
    secrets.push(("20 printable", printable(&mut rng, 20)));
    secrets.push(("hostile", hostile()));
    for (name, secret) in &secrets {
        let r = Redactor::new([secret]);
        check_all_offsets(&r, name, secret, &mut rng, 0..60);
    }
}

#[test]
fn wrapped_base64_at_every_offset_with_all_secrets_loaded() {
    let mut rng = Rng(0x1ea7_0102);
    let secrets = long_secrets();
    let mut all: Vec<Vec<u8>> = secrets.iter().map(|(_, s)| s.clone()).collect();
    all.extend(named_secrets());
    let r = Redactor::new(&all);
    for (name, secret) in &secrets {
        check_all_offsets(&r, name, secret, &mut rng, 0..60);
    }
}

/// `base64 | base64`, with either layer wrapped at 76 columns or not.
#[test]
fn base64_twice_with_wrapping() {
    let mut rng = Rng(0x1ea7_0103);
    let mut secrets = long_secrets();
    secrets.push(("44 printable", printable(&mut rng, 44)));
    let real = gnu_base64(&[], b"probe").is_some();
    for (name, secret) in secrets {
        let r = Redactor::new([&secret]);
        for inner_width in [0, 76] {
            for outer_width in [0, 76] {
                let inner = wrapped_base64(&secret, inner_width, LF);
                let outer = wrapped_base64(&inner, outer_width, LF);
                let ctx = format!("{name}, inner -w {inner_width}, outer -w {outer_width}");
                if real {
                    let w = |n: usize| n.to_string();
                    let i = gnu_base64(&["-w", &w(inner_width)], &secret).expect("base64");
                    let o = gnu_base64(&["-w", &w(outer_width)], &i).expect("base64");
                    assert_eq!(show(&o), show(&outer), "{ctx}: coreutils");
                }
                let out = r.redact(&outer);
                // Only the characters mixing in the inner layer's final
                // newline, the padding and line ends may remain.
                assert!(
                    out.starts_with(MASK.as_bytes()) && out.len() <= MASK.len() + 8,
                    "{ctx}: {}",
                    show(&out)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Percent-encoding

#[test]
fn every_byte_percent_escaped_in_either_case() {
    // Python: ''.join('%%%02x' % b for b in s.encode())
    let known = "%5a%71%37%22%4b%78%5c%77%50%2f%6d%34%09%54%7a%0a%38%2d%79%26\
                 %65%3c%c3%a9%3e%4c%70";
    assert_eq!(show(&escape_every_byte(&hostile(), false)), known);
    // The leading `%` stays: output ending in `%` must not be held back in
    // streams as the possible start of a secret.
    let r = Redactor::new([hostile()]);
    assert_eq!(r.redact_str(&format!("u={known}&x")), "u=%***&x");
    assert_eq!(
        r.redact_str(&format!("u={}&x", known.to_ascii_uppercase())),
        "u=%***&x"
    );

    let mut secrets = all_secrets();
    secrets.push(hostile());
    secrets.push(controls());
    for secret in &secrets {
        let r = Redactor::new([secret]);
        for upper in [false, true] {
            let form = escape_every_byte(secret, upper);
            let text = surround(&form);
            // Without letters or digits this is also the non-alphanumeric
            // form, which is masked from its first `%`.
            let plain = percent_encode(secret, NON_ALPHANUMERIC).to_string();
            let classic = [lower_hex_escapes(&plain), plain].map(String::into_bytes);
            let want = if classic.contains(&form) && form.len() >= 6 {
                masked_text()
            } else if form.len() > 6 {
                surround(format!("%{MASK}").as_bytes())
            } else {
                text.clone()
            };
            assert_eq!(
                show(&r.redact(&text)),
                show(&want),
                "upper={upper} {:?}",
                show(secret)
            );
        }
    }
}

#[test]
fn lowercase_escapes_under_every_encoder_set() {
    let r = Redactor::new([hostile()]);
    // Python: quote(s, safe=''), quote(s), quote_plus(s); hex lowered.
    for known in [
        "Zq7%22Kx%5cwP%2fm4%09Tz%0a8-y%26e%3c%c3%a9%3eLp",
        "Zq7%22Kx%5cwP/m4%09Tz%0a8-y%26e%3c%c3%a9%3eLp",
    ] {
        assert_eq!(r.redact_str(&format!("u={known}&x")), "u=***&x", "{known}");
    }

    let mut secrets = all_secrets();
    secrets.push(hostile());
    for secret in &secrets {
        let r = Redactor::new([secret]);
        for (name, set) in URL_SETS {
            let upper = percent_encode(secret, set).to_string();
            let lower = lower_hex_escapes(&upper);
            for form in [lower.clone(), lower.replace("%20", "+"), upper] {
                let text = surround(form.as_bytes());
                let want = if must_mask_form(secret, form.as_bytes()) {
                    masked_text()
                } else {
                    text.clone()
                };
                assert_eq!(
                    show(&r.redact(&text)),
                    show(&want),
                    "{name}: {form} of {:?}",
                    show(secret)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// JSON string escaping

#[test]
fn json_escaped_known_answers() {
    let r = Redactor::new([hostile()]);
    for (encoder, body) in [
        // Python json.dumps (ensure_ascii=True is the default).
        ("python", r#"Zq7\"Kx\\wP/m4\tTz\n8-y&e<\u00e9>Lp"#),
        // Node JSON.stringify, serde_json, Python with ensure_ascii=False.
        ("node", r#"Zq7\"Kx\\wP/m4\tTz\n8-y&e<é>Lp"#),
        // PHP json_encode.
        ("php", r#"Zq7\"Kx\\wP\/m4\tTz\n8-y&e<\u00e9>Lp"#),
        // Go encoding/json.
        ("go", r#"Zq7\"Kx\\wP/m4\tTz\n8-y\u0026e\u003cé\u003eLp"#),
        // Python json.dumps(json.dumps({"password": s})): JSON inside JSON.
        (
            "python twice",
            r#"Zq7\\\"Kx\\\\wP/m4\\tTz\\n8-y&e<\\u00e9>Lp"#,
        ),
    ] {
        let doc = format!("{{\"password\": \"{body}\", \"user\": \"ci\"}}\n");
        assert_eq!(
            r.redact_str(&doc),
            "{\"password\": \"***\", \"user\": \"ci\"}\n",
            "{encoder}"
        );
    }

    let r = Redactor::new([controls()]);
    for (encoder, body) in [
        ("python", r#"ctl\u0001\u001b\r\b\f\u007f\ud83d\ude00end/x"#),
        ("node", "ctl\\u0001\\u001b\\r\\b\\f\u{7f}\u{1F600}end/x"),
    ] {
        let doc = format!("[\"{body}\"]");
        assert_eq!(r.redact_str(&doc), "[\"***\"]", "{encoder}");
    }
}

#[test]
fn json_escaped_secret_in_every_style() {
    let mut secrets: Vec<Vec<u8>> = named_secrets();
    secrets.push(hostile());
    secrets.push(controls());
    secrets.push(pem_like());
    for secret in &secrets {
        let Ok(text) = std::str::from_utf8(secret) else {
            continue; // JSON cannot carry invalid UTF-8
        };
        let r = Redactor::new([secret]);
        for style in json_styles() {
            let once = json_escape(text, style);
            let twice = json_escape(&once, style);
            for (depth, form) in [("once", once), ("twice", twice)] {
                let doc = format!("{{\"k\": \"{form}\"}}");
                let want = if must_mask_form(secret, form.as_bytes()) {
                    "{\"k\": \"***\"}".to_owned()
                } else {
                    doc.clone()
                };
                assert_eq!(r.redact_str(&doc), want, "{style:?} {depth}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// CRLF line ends

#[test]
fn multiline_secret_printed_with_crlf() {
    let pem = pem_like();
    let crlf = with_crlf(&pem);
    let r = Redactor::new([&pem]);

    // Whole, as a terminal (ONLCR) or a Windows tool prints it. The 4-byte
    // last body line is only hidden when the key is matched whole.
    assert_eq!(show(&r.redact(&crlf)), MASK);
    let log = [b"key:\r\n".as_slice(), &crlf, b"done\r\n"].concat();
    assert_eq!(show(&r.redact(&log)), format!("key:\r\n{MASK}done\r\n"));

    // Line by line with CRLF: every line of 8 bytes or more is masked.
    let text = std::str::from_utf8(&pem).expect("PEM is ASCII");
    for line in text.lines() {
        let printed = format!("> {line}\r\n");
        let want = if line.len() >= 8 {
            format!("> {MASK}\r\n")
        } else {
            printed.clone()
        };
        assert_eq!(r.redact_str(&printed), want, "{line}");
    }

    // A key stored with CRLF, printed with LF or through a terminal that
    // turns each LF into CRLF (leaving CR CR LF).
    let r = Redactor::new([&crlf]);
    assert_eq!(show(&r.redact(&pem)), MASK);
    assert_eq!(show(&r.redact(&with_crlf(&crlf))), MASK);
    assert_eq!(show(&r.redact(&crlf)), MASK);
}

#[test]
fn short_multiline_secret_with_crlf() {
    // Raw-value variants are masked at any length, like the raw value.
    let r = Redactor::new(["a\nb"]);
    assert_eq!(r.redact_str("x a\r\nb y"), "x *** y");
    assert_eq!(r.redact_str("x a\nb y"), "x *** y");
    // A JSON form shorter than 6 bytes is a derived form and stays.
    let r = Redactor::new(["a\"b"]);
    assert_eq!(r.redact_str(r#"x a\"b y a"b"#), r#"x a\"b y ***"#);
}

// ---------------------------------------------------------------------------
// Streaming and over-masking

/// The new forms of `secret`, each standing for the whole secret.
fn new_forms(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut forms = Vec::new();
    for width in WIDTHS {
        for (eol_name, eol) in EOLS {
            let enc = STANDARD.encode(secret);
            forms.push((
                format!("base64 {width} {eol_name}"),
                wrap(enc.as_bytes(), width, eol),
            ));
        }
    }
    for upper in [false, true] {
        // From after the first `%`, which is left visible.
        forms.push((
            format!("every byte escaped, upper={upper}"),
            escape_every_byte(secret, upper)[1..].to_vec(),
        ));
    }
    if let Ok(text) = std::str::from_utf8(secret) {
        for style in json_styles() {
            forms.push((format!("json {style:?}"), json_escape(text, style).into()));
        }
    }
    if secret.contains(&b'\n') {
        forms.push(("crlf".to_owned(), with_crlf(secret)));
    }
    forms.retain(|(_, f)| f.len() >= 6);
    forms
}

#[test]
fn new_forms_stream_like_one_shot() {
    let mut rng = Rng(0x1ea7_0201);
    let secrets = [
        printable(&mut rng, 58),
        printable(&mut rng, 100),
        hostile(),
        controls(),
        pem_like(),
    ];
    for secret in &secrets {
        let r = Redactor::new([secret]);
        for (name, form) in new_forms(secret) {
            let text = surround(&form);
            let want = masked_text();
            assert_eq!(show(&r.redact(&text)), show(&want), "{name}");
            if text.len() <= 400 {
                for at in 0..=text.len() {
                    let out = stream_chunked(&r, &text, &[at.max(1), text.len()]);
                    assert_eq!(show(&out), show(&want), "{name} split at {at}");
                }
            }
            let out = stream_chunked(&r, &text, &[1]);
            assert_eq!(show(&out), show(&want), "{name} byte by byte");
            let sizes: Vec<usize> = (0..7).map(|_| 1 + rng.below(97)).collect();
            let out = stream_chunked(&r, &text, &sizes);
            assert_eq!(show(&out), show(&want), "{name} in chunks {sizes:?}");
        }
    }
}

#[test]
fn embedded_wrapped_base64_streams_like_one_shot() {
    let mut rng = Rng(0x1ea7_0202);
    for (name, secret) in long_secrets() {
        let r = Redactor::new([&secret]);
        for width in WIDTHS {
            for (eol_name, eol) in EOLS {
                let p = 1 + rng.below(80);
                let mut data = rng.bytes(p);
                data.extend_from_slice(&secret);
                let q = rng.below(3);
                data.extend(rng.bytes(q));
                let text = wrapped_base64(&data, width, eol);
                let want = r.redact(&text);
                let ctx = format!("{name}, {width} {eol_name}, p={p}");
                let roles = roles(data.len(), p..p + secret.len(), width, eol);
                check_wrapped(&text, &roles, &want, &ctx);
                assert!(
                    stream_chunked(&r, &text, &[1]) == want,
                    "{ctx} byte by byte"
                );
                for _ in 0..5 {
                    let sizes: Vec<usize> = (0..7).map(|_| 1 + rng.below(150)).collect();
                    let out = stream_chunked(&r, &text, &sizes);
                    assert!(out == want, "{ctx} in chunks {sizes:?}");
                }
            }
        }
    }
}

#[test]
fn unrelated_output_is_not_masked() {
    let mut rng = Rng(0x1ea7_0301);
    let mut secrets: Vec<Vec<u8>> = long_secrets().into_iter().map(|(_, s)| s).collect();
    secrets.push(hostile());
    secrets.push(controls());
    let r = Redactor::new(&secrets);

    let mut input = Vec::new();
    for width in WIDTHS {
        for (_, eol) in EOLS {
            let blob = rng.bytes(3000);
            input.extend(wrapped_base64(&blob, width, eol));
            input.extend(wrapped_base64(
                STANDARD.encode(&blob).as_bytes(),
                width,
                eol,
            ));
        }
    }
    input.extend(with_crlf(
        b"-----BEGIN CERTIFICATE-----\nnot the key\n-----END CERTIFICATE-----\n",
    ));
    input.extend_from_slice(br#"{"msg": "path \"a\\b\/c\"\n\tdone \u00e9 \u003c"}"#);
    // Near misses: one character differs from a masked form.
    input.extend_from_slice(b"\nq=");
    input.extend(escape_every_byte(
        "Zq7\"Kx\\wP/m4\tTz\n8-y&e<\u{e9}>Lq".as_bytes(),
        false,
    ));
    input.extend_from_slice(br#" {"k": "Zq7\"Kx\\wP/m4\tTz\n8-y&e<\u00e9>Lq"}"#);
    input.push(b'\n');

    assert!(r.redact(&input) == input, "unrelated output changed");
    assert!(stream_chunked(&r, &input, &[1]) == input, "byte by byte");
    assert!(
        stream_chunked(&r, &input, &[7, 300, 64]) == input,
        "chunked"
    );
}
