//! Durations as users write them: `"500ms"`, `"2s"`, `"1m"`, `"1h"`.

use std::time::Duration;

/// Parses a number (decimals allowed) followed by `us`, `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} has no unit (use ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("duration {s:?} has unknown unit {unit:?} (use us, ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=86400.0 * 365.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The milliseconds of an optional duration field at `path`, `default` when it is not set; a
/// bad one is reported into `errors` (and reads as `default`).
pub(crate) fn millis_or(v: Option<&str>, path: &str, default: u64, errors: &mut crate::ConfigErrors) -> u64 {
    match v.map(parse_duration) {
        None => default,
        Some(Ok(d)) => d.as_millis() as u64,
        Some(Err(e)) => {
            errors.push(path.to_string(), e);
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3days").is_err());
    }
}
