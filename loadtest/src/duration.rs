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
/// A Unix time in milliseconds as a UTC date and time: `2026-12-08 02:44:50 UTC`.
pub fn format_unix_ms(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date, counting in 400-year eras of 146 097 days whose
    // years start on March 1st (so the leap day is the last day of a year).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

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
    fn unix_milliseconds_format_as_a_utc_date_and_time() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789.
        assert_eq!(format_unix_ms(951_827_696_789), "2000-02-29 12:34:56 UTC");
        assert_eq!(format_unix_ms(1_796_697_890_000), "2026-12-08 02:44:50 UTC");
    }

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
