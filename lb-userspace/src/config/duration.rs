//! Durations as HAProxy writes them: an unsigned integer and an optional unit.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration {input:?}")]
    Negative { input: String },
    #[error("duration {input:?} does not start with a number")]
    MissingNumber { input: String },
    #[error(
        "unknown unit {unit:?} in duration {input:?} (valid: ms, s, m, h, d, y; no unit means ms)"
    )]
    UnknownUnit { input: String, unit: String },
    #[error("duration {input:?} is too large")]
    Overflow { input: String },
}

/// Parses `500ms`, `2s`, `30m`, `1h`, `1d`, `1y` (365 days), or a bare integer meaning milliseconds (HAProxy's
/// convention). No sign, no fraction, no spaces.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative {
            input: s.to_owned(),
        });
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(DurationError::MissingNumber {
            input: s.to_owned(),
        });
    }
    let overflow = || DurationError::Overflow {
        input: s.to_owned(),
    };
    // Only ASCII digits are left, so the one way this parse fails is a number above u64::MAX.
    let n: u64 = digits.parse().map_err(|_| overflow())?;
    let seconds_per_unit = match unit {
        "" | "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        // For `hsts`, whose max-age is counted in years.
        "y" => 365 * 24 * 60 * 60,
        _ => {
            return Err(DurationError::UnknownUnit {
                input: s.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    n.checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(overflow)
}
