use std::path::PathBuf;

use crate::params::ParamType;

/// Everything that can go wrong loading or calling a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kiln.star (or a loaded file) does not parse: `file:line:col`, the
    /// offending line with a caret, and what was expected.
    #[error("{message}")]
    Syntax { message: String },
    /// Evaluation failed: the message has the starlark call stack and the
    /// failing expression's `file:line:col`.
    #[error("{message}")]
    Eval { message: String },
    /// A value did not match a type annotation (at `file:line:col` when the
    /// check happened inside Starlark code), or an argument given to
    /// [`Pipeline::call`](crate::Pipeline::call) does not fit its parameter.
    #[error("{message}")]
    Type { message: String },
    #[error("{}", unknown_function(.name, .suggestions))]
    UnknownFunction {
        name: String,
        /// The closest existing function names, best first (at most 3).
        suggestions: Vec<String>,
    },
    /// A required parameter was not given. `flag` is without dashes.
    #[error("missing --{flag} ({}: {})", .ty.name(), .ty.hint())]
    MissingArgument { flag: String, ty: ParamType },
    /// A flag's value does not fit its parameter. `flag` is without dashes.
    #[error("--{flag}: {message}")]
    BadArgument { flag: String, message: String },
    /// A `load()` failed: the message names the file and the loading
    /// `file:line:col`.
    #[error("{message}")]
    Load { message: String },
    /// Evaluation ran into one of its [`EvalLimits`](crate::EvalLimits).
    #[error("{what} stopped: it exceeded the limit of {limit} (a runaway loop or allocation?); raise it with {flag} if the pipeline really needs more")]
    LimitExceeded {
        what: String,
        limit: String,
        flag: &'static str,
    },
    /// The interpreter itself gave up (it panicked), as it does on a value
    /// too large for its heap built in one native call.
    #[error("{what} stopped: the Starlark interpreter could not go on ({reason}); this happens when one value is too large to build, e.g. list(range(N)) with a huge N: build smaller values")]
    InterpreterFailed { what: String, reason: String },
    /// The run was cancelled (Ctrl-C, SIGTERM, a cancelled job) while
    /// Starlark code was running.
    #[error("{what} stopped: the run was cancelled")]
    Cancelled { what: String },
    /// There is no kiln.star where one was expected.
    #[error("{} does not exist", .path.display())]
    NotFound { path: PathBuf },
    /// The engine failed while solving a value (a step failed, an image is
    /// missing, ...), intact so that front ends can show its details.
    #[error(transparent)]
    Engine(#[from] kiln_engine::Error),
}

fn unknown_function(name: &str, suggestions: &[String]) -> String {
    let mut msg = format!("kiln.star has no function {name:?}");
    match suggestions {
        [] => msg.push_str(" (`kiln functions` lists them)"),
        [one] => msg.push_str(&format!("; did you mean {one}?")),
        many => msg.push_str(&format!("; did you mean one of: {}?", many.join(", "))),
    }
    msg
}

/// What kind of failure a starlark error is, for [`from_starlark`].
#[derive(Clone, Copy)]
pub(crate) enum Phase {
    Parse,
    Eval,
}

/// Recovers an engine error raised by a solving method, wherever in the
/// starlark call stack it happened.
pub(crate) fn engine_error(err: &starlark::Error) -> Option<kiln_engine::Error> {
    use starlark::ErrorKind;
    match err.kind() {
        ErrorKind::Native(e)
        | ErrorKind::Other(e)
        | ErrorKind::Value(e)
        | ErrorKind::Function(e) => e.downcast_ref::<kiln_engine::Error>().cloned(),
        _ => None,
    }
}

/// Converts a starlark error, keeping its rendering: starlark's display
/// already has the call stack and an annotated snippet of the source line
/// with `file:line:col` (file names are relative to the repository root
/// because that is how files are named when parsed).
pub(crate) fn from_starlark(err: starlark::Error, phase: Phase) -> Error {
    if let Some(engine) = engine_error(&err) {
        // The engine error stays intact for the front end; where in the
        // pipeline it was raised is still worth a trace.
        tracing::debug!(location = %render(&err), "engine error raised in Starlark");
        return Error::Engine(engine);
    }
    let message = render(&err);
    match (phase, err.kind()) {
        (_, starlark::ErrorKind::Parser(_)) | (Phase::Parse, _) => Error::Syntax { message },
        _ if is_type_error(&err.without_diagnostic().to_string()) => Error::Type { message },
        _ => Error::Eval { message },
    }
}

/// Starlark has no error kind for type mismatches; these are its wordings
/// for a value against an annotation, a native parameter, and the
/// compile-time check of a call.
fn is_type_error(text: &str) -> bool {
    text.contains("does not match the type annotation")
        || text.contains("doesn't match, expected")
        || text.contains("Expected type `")
}

/// Starlark's rendering of an error, tidied: without the frame of the
/// host's call into Starlark and the trailing blank gutter.
pub(crate) fn render(err: &starlark::Error) -> String {
    let text = err.to_string();
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| l.trim() != "File <builtin>, in <module>")
        .collect();
    if lines.first() == Some(&"Traceback (most recent call last):")
        && lines.get(1).is_some_and(|l| l.starts_with("error"))
    {
        lines.remove(0);
    }
    // annotate-snippets ends with an empty gutter line.
    while lines
        .last()
        .is_some_and(|l| l.trim().is_empty() || l.trim() == "|")
    {
        lines.pop();
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_function_messages() {
        let e = |s: &[&str]| Error::UnknownFunction {
            name: "biuld".into(),
            suggestions: s.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            e(&["build"]).to_string(),
            "kiln.star has no function \"biuld\"; did you mean build?"
        );
        assert_eq!(
            e(&["build", "built"]).to_string(),
            "kiln.star has no function \"biuld\"; did you mean one of: build, built?"
        );
        assert!(e(&[]).to_string().contains("kiln functions"));
    }

    #[test]
    fn engine_errors_survive_starlark() {
        let engine = kiln_engine::Error::Invalid("boom".into());
        let err = starlark::Error::new_native(anyhow::Error::new(engine));
        match from_starlark(err, Phase::Eval) {
            Error::Engine(kiln_engine::Error::Invalid(msg)) => assert_eq!(msg, "boom"),
            other => panic!("expected the engine error back, got {other:?}"),
        }
    }
}
