//! Resource limits and timeouts of steps, and the parsers for how users
//! write them (`4g`, `1.5`, `30m`), shared by the CLI and pipelines.

use std::time::Duration;

/// Limits for the steps of a container. A field left `None` keeps what was
/// set before it in the chain, or else the engine's default. None of these
/// is part of a step's key: a limit changes whether a step finishes, not
/// what it produces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Memory plus swap of all the step's processes.
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU (`--cpus 1.5` is 1500).
    pub cpu_millis: Option<u64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// Wall-clock time the step may run.
    pub timeout: Option<Duration>,
}

impl Limits {
    /// `self`'s fields, and `fallback`'s where `self` has none.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.or(fallback.memory_bytes),
            cpu_millis: self.cpu_millis.or(fallback.cpu_millis),
            pids: self.pids.or(fallback.pids),
            timeout: self.timeout.or(fallback.timeout),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A size like Docker's `--memory`: a number of bytes, or one with a
/// suffix `k`, `m`, `g`, `t` (powers of 1024; `kb`, `mib`, `GiB`... too).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "memory size {text:?} has an unknown unit; write e.g. 512m or 4g"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("memory size {text:?} is not a number with a unit, e.g. 512m or 4g")
    })?;
    let bytes = value * (1u64 << shift) as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("memory size {text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// CPUs like Docker's `--cpus`: `2`, `0.5`, `1.25`; at most 3 decimals count.
pub fn parse_cpus(text: &str) -> Result<u64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("cpus {text:?} is not a number, e.g. 2 or 0.5"))?;
    let millis = (value * 1000.0).round();
    if !(1.0..=1_000_000.0).contains(&millis) {
        return Err(format!("cpus {text:?} must be between 0.001 and 1000"));
    }
    Ok(millis as u64)
}

/// A duration: seconds as a bare number, or with units `ms`, `s`, `m`,
/// `h`, `d`, combined (`1h30m`, `90s`, `2.5m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("duration {text:?} is not like 90s, 30m, 1h30m or a number of seconds");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = t.parse::<f64>() {
        return seconds_to_duration(seconds).ok_or_else(bad);
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(split);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = next;
    }
    seconds_to_duration(total).ok_or_else(bad)
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds > 0.0 && seconds.is_finite() && seconds < 1e10)
        .then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("4g"), Ok(4 << 30));
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_memory("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory("64 kb"), Ok(64 << 10));
        for bad in ["", "g", "4x", "-1g", "0", "lots"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("1.25"), Ok(1250));
        for bad in ["0", "-1", "two", "0.0001"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "m", "10x", "-5s", "0", "5 m", "1h-2m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_limits_win_field_by_field() {
        let base = Limits {
            memory_bytes: Some(1),
            pids: Some(2),
            ..Limits::default()
        };
        let step = Limits {
            pids: Some(3),
            timeout: Some(Duration::from_secs(4)),
            ..Limits::default()
        };
        let merged = step.or(base);
        assert_eq!(merged.memory_bytes, Some(1));
        assert_eq!(merged.pids, Some(3));
        assert_eq!(merged.timeout, Some(Duration::from_secs(4)));
    }
}
