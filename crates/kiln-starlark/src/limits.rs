//! Bounds on Starlark evaluation: a pipeline is other people's code, and a
//! loop or an allocation in it must not hold a core or the host's memory.
//!
//! Both bounds are counted by the interpreter, so a pipeline that fits on a
//! laptop fits on a runner: a step budget rather than a wall-clock limit,
//! which would fail a loaded machine's run that passed on an idle one. Time
//! spent solving (running containers) is not evaluation and counts against
//! neither.

use starlark::eval::Evaluator;

use crate::error::Error;

/// Limits for one evaluation: loading one file, or one function call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalLimits {
    /// Interpreter steps (bytecode instructions, as starlark counts ticks).
    pub max_steps: u64,
    /// Bytes on the Starlark heap (lists, strings, structs, ...).
    pub max_heap_bytes: usize,
}

impl EvalLimits {
    /// About 10–20 s of pure interpretation on one core: far above what
    /// building a graph of thousands of steps takes (well under 1 M steps),
    /// and a runaway loop still fails within seconds-to-a-minute.
    pub const DEFAULT_MAX_STEPS: u64 = 200_000_000;
    /// Far above any real pipeline's graph, low enough that a runaway
    /// comprehension fails long before a runner's memory is gone.
    pub const DEFAULT_MAX_HEAP_BYTES: usize = 1 << 30;

    pub const STEPS_FLAG: &'static str = "--eval-max-steps (KILN_EVAL_MAX_STEPS)";
    pub const HEAP_FLAG: &'static str = "--eval-max-memory (KILN_EVAL_MAX_MEMORY)";

    /// Applies the limits, and cancellation through `is_cancelled`, to an
    /// evaluator. The interpreter checks them every thousand instructions.
    pub(crate) fn apply<'a>(
        &self,
        eval: &mut Evaluator<'_, 'a, '_>,
        is_cancelled: impl Fn() -> bool + 'a,
    ) {
        // Both fail only on zero or when set twice; neither can happen for a
        // fresh evaluator given validated limits.
        let _ = eval.set_max_tick_count(self.max_steps.max(1));
        let _ = eval.set_max_heap_size(self.max_heap_bytes.max(1));
        eval.set_check_cancelled(Box::new(is_cancelled));
    }

    /// Names the limit an evaluation ran into, if it stopped on one;
    /// `cancelled` says whether the run was being cancelled.
    pub(crate) fn exceeded(
        &self,
        eval: &mut Evaluator,
        cancelled: bool,
        what: &str,
    ) -> Option<Error> {
        if cancelled {
            return Some(Error::Cancelled {
                what: what.to_owned(),
            });
        }
        if eval.get_total_tick_count() >= self.max_steps {
            return Some(Error::LimitExceeded {
                what: what.to_owned(),
                limit: format!("{} interpreter steps", self.max_steps),
                flag: Self::STEPS_FLAG,
            });
        }
        let heap = eval.heap().peak_allocated_bytes() + eval.frozen_heap().allocated_bytes();
        if heap >= self.max_heap_bytes {
            return Some(Error::LimitExceeded {
                what: what.to_owned(),
                limit: format!("{} of Starlark memory", human_bytes(self.max_heap_bytes)),
                flag: Self::HEAP_FLAG,
            });
        }
        None
    }
}

impl Default for EvalLimits {
    fn default() -> EvalLimits {
        EvalLimits {
            max_steps: Self::DEFAULT_MAX_STEPS,
            max_heap_bytes: Self::DEFAULT_MAX_HEAP_BYTES,
        }
    }
}

fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Brackets open at once in one expression.
pub(crate) const MAX_NESTING: usize = 200;
/// Operators in one expression (between commas, within a logical line).
pub(crate) const MAX_OPERATORS: usize = 1000;

/// Refuses source the parser and compiler would recurse through too deeply
/// (they recurse per nesting level and per operator of a chain, and a stack
/// overflow aborts the process): brackets nested more than [`MAX_NESTING`]
/// deep, or more than [`MAX_OPERATORS`] operators in one logical line. Far
/// above anything a person writes; a generated file that needs more can
/// split its expressions.
pub(crate) fn check_expression_size(name: &str, source: &str) -> Result<(), Error> {
    let bytes = source.as_bytes();
    let (mut depth, mut operators, mut line, mut statement_line) = (0usize, 0usize, 1usize, 1usize);
    let mut i = 0;
    let too_big = |line: usize, what: String| {
        Error::Syntax {
        message: format!(
            "error: {name}:{line}: {what}; split it into smaller expressions (kiln refuses it before parsing, which would recurse that deep)"
        ),
    }
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                let triple = bytes.get(i..i + 3) == Some(&[b, b, b][..]);
                i += if triple { 3 } else { 1 };
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 1,
                        b'\n' => {
                            line += 1;
                            if !triple {
                                break;
                            }
                        }
                        c if c == b && (!triple || bytes.get(i..i + 3) == Some(&[b, b, b][..])) => {
                            i += if triple { 3 } else { 1 };
                            break;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_big(
                        line,
                        format!("brackets nested more than {MAX_NESTING} deep"),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            // Elements of a list or arguments of a call are compiled one
            // after the other; only a chain within one element recurses.
            b',' => operators = 0,
            b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^' | b'<' | b'>' => operators += 1,
            b'\n' => {
                line += 1;
                if depth == 0 {
                    operators = 0;
                    statement_line = line;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if matches!(&bytes[start..i], b"and" | b"or" | b"not" | b"if" | b"in") {
                    operators += 1;
                }
                continue;
            }
            _ => {}
        }
        if operators > MAX_OPERATORS {
            return Err(too_big(
                statement_line,
                format!("more than {MAX_OPERATORS} operators in one expression"),
            ));
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_code_passes_and_strings_and_comments_do_not_count() {
        let code = "X = [1, (2, {3: 4})]\n# (((((\nS = \"(((\" + '[[[' + \"\"\"\n{{{\n\"\"\"\n";
        assert!(check_expression_size("kiln.star", code).is_ok());
        let many_lines: String = (0..5000).map(|i| format!("A{i} = 1 + 2\n")).collect();
        assert!(check_expression_size("kiln.star", &many_lines).is_ok());
        let table = format!("T = [{}]\n", vec!["-1"; 5000].join(", "));
        assert!(check_expression_size("kiln.star", &table).is_ok());
    }

    #[test]
    fn deep_nesting_and_long_chains_are_refused_with_their_line() {
        let deep = format!("A = 1\nX = {}{}\n", "[".repeat(201), "]".repeat(201));
        let e = check_expression_size("kiln.star", &deep)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kiln.star:2:") && e.contains("200 deep"), "{e}");
        let chain = format!("X = {}\n", vec!["1"; 1002].join(" + "));
        let e = check_expression_size("kiln.star", &chain)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kiln.star:1:") && e.contains("1000 operators"),
            "{e}"
        );
    }
}

thread_local! {
    /// How many [`contain_panics`] calls this thread is inside.
    static CONTAINING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs an evaluation, turning a panic inside the interpreter into an
/// error. The Starlark interpreter panics on some allocations too large for
/// its heap (`list(range(1000000000))` in one native call), before any limit
/// check can run; a pipeline must not be able to crash kiln with a
/// backtrace that way. While contained, the panic is not printed.
pub(crate) fn contain_panics<T>(
    what: &str,
    evaluate: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINING.with(|c| c.get()) == 0 {
                previous(info);
            }
        }));
    });
    CONTAINING.with(|c| c.set(c.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(evaluate));
    CONTAINING.with(|c| c.set(c.get() - 1));
    match result {
        Ok(result) => result,
        Err(payload) => {
            let reason = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no reason given".to_owned());
            Err(Error::InterpreterFailed {
                what: what.to_owned(),
                reason,
            })
        }
    }
}
