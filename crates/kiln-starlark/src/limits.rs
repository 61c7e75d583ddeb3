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
