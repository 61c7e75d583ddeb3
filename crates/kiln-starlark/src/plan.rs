//! Which images a pipeline uses, found without running it (for `kiln lock`
//! and `--locked`).
//!
//! Two sources, united:
//! - every function is called with placeholder arguments on a plan-only
//!   engine: values are lazy, so the call builds graphs and runs nothing,
//!   and every `container(REF)` it reaches is recorded, computed references
//!   included. A function that solves something itself (`stdout()`,
//!   `publish()`) stops at that point; what it used before is kept.
//! - every string literal passed straight to `container(...)` in the
//!   pipeline's files, which covers the branches placeholders do not take.

use std::collections::BTreeSet;

use crate::params::{ArgValue, ParamType};
use crate::{Error, Pipeline};

/// The images a pipeline uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePlan {
    /// References as written in the pipeline (`alpine:3.20`), sorted.
    pub references: BTreeSet<String>,
    /// Functions whose evaluation stopped early, and why: their later
    /// `container()` calls were only found if written as literals.
    pub incomplete: Vec<(String, String)>,
}

impl Pipeline {
    /// Finds the images the pipeline uses. The pipeline must have been
    /// loaded on a plan-only engine (`EngineOptions::plan_only`), so that
    /// nothing is solved or pulled while its functions are evaluated.
    pub fn plan_images(&self) -> Result<ImagePlan, Error> {
        if !self.engine().is_plan_only() {
            return Err(Error::Load {
                message: "plan_images needs a pipeline loaded on a plan-only engine".into(),
            });
        }
        let mut plan = ImagePlan::default();
        for info in self.functions() {
            let mut args = Vec::new();
            for param in info.params.iter().filter(|p| p.required) {
                let value = match &param.ty {
                    // The repository stands in for a directory: like the real
                    // argument it is a host directory, which include/exclude
                    // filters need. Nothing is read: the engine never solves.
                    ParamType::Directory => {
                        ArgValue::Directory(self.engine().host_directory(self.root()))
                    }
                    ParamType::File => {
                        ArgValue::File(self.engine().host_file(self.root().join(crate::KILN_STAR)))
                    }
                    ParamType::Secret => ArgValue::Secret(self.engine().plan_secret(&param.name)),
                    ParamType::Str => ArgValue::Str(String::new()),
                    ParamType::Int => ArgValue::Int(0),
                    ParamType::Bool => ArgValue::Bool(false),
                    ParamType::ListStr => ArgValue::ListStr(Vec::new()),
                    ParamType::CacheVolume => ArgValue::CacheVolume(param.name.clone()),
                    ParamType::Container => ArgValue::Container(self.engine().scratch()),
                    ParamType::Unsupported(_) => {
                        plan.incomplete.push((
                            info.name.clone(),
                            format!("parameter `{}` has no placeholder", param.name),
                        ));
                        continue;
                    }
                };
                args.push((param.name.clone(), value));
            }
            if let Err(e) = self.call(&info.name, args) {
                plan.incomplete
                    .push((info.name.clone(), headline(&e.to_string())));
            }
        }
        plan.references.extend(self.engine().image_references());
        for file in self.files() {
            let path = self.root().join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Load {
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            plan.references.extend(container_literals(&text));
        }
        Ok(plan)
    }
}

/// The line of a (possibly multi-line, traceback-style) error that says
/// what went wrong.
fn headline(message: &str) -> String {
    let lines = || message.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find_map(|l| l.strip_prefix("error: "))
        .or_else(|| lines().next_back())
        .unwrap_or_default()
        .to_owned()
}

/// String literals passed as the first argument of `container(...)`.
/// A lexical scan, not a parse: it skips comments and other strings, and
/// misses only references that are computed, which evaluation finds.
pub(crate) fn container_literals(source: &str) -> Vec<String> {
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => i = skip_string(bytes, i).1,
            b'c' if source[i..].starts_with("container") && (i == 0 || !is_ident(bytes[i - 1])) => {
                let mut j = i + "container".len();
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if bytes.get(j) == Some(&b'(') {
                    j += 1;
                    while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if matches!(bytes.get(j), Some(b'"' | b'\'')) {
                        let (literal, end) = skip_string(bytes, j);
                        let mut k = end;
                        while k < bytes.len() && bytes[k].is_ascii_whitespace() {
                            k += 1;
                        }
                        // `container("a" + x)` is computed: evaluation finds it.
                        if let (Some(literal), Some(b')' | b',')) = (literal, bytes.get(k)) {
                            found.push(literal);
                        }
                        i = end;
                        continue;
                    }
                }
                i += "container".len();
            }
            b if is_ident(b) => {
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    found
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Skips the string starting at `start` (a quote). Returns its value when it
/// is a plain one-line literal without escapes, and the index after it.
fn skip_string(bytes: &[u8], start: usize) -> (Option<String>, usize) {
    let quote = bytes[start];
    let triple = bytes.get(start..start + 3) == Some(&[quote, quote, quote][..]);
    if triple {
        let mut i = start + 3;
        while i < bytes.len() {
            if bytes[i] == b'\\' {
                i += 2;
                continue;
            }
            if bytes.get(i..i + 3) == Some(&[quote, quote, quote][..]) {
                return (None, i + 3);
            }
            i += 1;
        }
        return (None, bytes.len());
    }
    let mut i = start + 1;
    let mut plain = true;
    while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
        if bytes[i] == b'\\' {
            plain = false;
            i += 1;
        }
        i += 1;
    }
    let end = (i + 1).min(bytes.len());
    let value = (plain && bytes.get(i) == Some(&quote))
        .then(|| String::from_utf8_lossy(&bytes[start + 1..i]).into_owned());
    (value, end)
}

#[cfg(test)]
mod tests {
    use super::{container_literals, headline};

    #[test]
    fn headline_is_the_error_line() {
        let traceback = "Traceback (most recent call last):\n  * kiln.star:3, in f\nerror: stdout is not possible while only planning\n --> kiln.star:3:5\n";
        assert_eq!(
            headline(traceback),
            "stdout is not possible while only planning"
        );
        assert_eq!(headline("just one line"), "just one line");
    }

    #[test]
    fn finds_literal_references_only() {
        let source = r#"
# container("commented:1") is not a use
def build(src):
    base = container("alpine:3.20")
    other = container( 'busybox:1.36' , )
    computed = container("golang:" + version)
    doc = """container("in-a-docstring:1")"""
    s = "container(\"in-a-string:1\")"
    return my_container("not-ours:1")
"#;
        assert_eq!(
            container_literals(source),
            vec!["alpine:3.20", "busybox:1.36"]
        );
    }
}
