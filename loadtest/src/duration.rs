//! Durations as people type them on a command line or in a scenario file: `500ms`, `10s`,
//! `2m`, `1h`, `1.5s`, or a bare number of seconds.

use std::time::Duration;

/// Longest duration accepted anywhere (a day): a typo such as `10000m` is refused instead of
/// starting a run that never ends.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses `text` as a duration; the error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m or h, e.g. 30s)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > DURATION_MAX.as_secs_f64() {
        return Err(format!("{text:?} is longer than the 24 h limit"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The inverse of [`parse_duration`] for reports: `250ms`, `12s`, `1.5s`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 1.0 {
        format!("{}ms", duration.as_millis())
    } else if seconds.fract() == 0.0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{seconds:.1}s")
    }
}

/// A latency in microseconds as a short human string: `87µs`, `1.25ms`, `2.3s`.
pub fn format_micros(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.2}ms", micros as f64 / 1e3)
    } else {
        format!("{:.2}s", micros as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_refuse_unknown_units_and_absurd_lengths() {
        assert!(
            parse_duration("10 fortnights")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("100h").unwrap_err().contains("24 h"));
    }

    #[test]
    fn latencies_format_in_the_unit_that_reads_best() {
        assert_eq!(format_micros(87), "87µs");
        assert_eq!(format_micros(1250), "1.25ms");
        assert_eq!(format_micros(2_300_000), "2.30s");
    }
}
