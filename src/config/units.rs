//! Durations ("1h30m") and sizes ("16MiB") as the config writes them.

use std::time::Duration;

use super::hcl::Literal;

/// A duration such as "90s", "30m", "2h", "1d", "1h30m", or "250ms" for the few settings that
/// want less than a second (how soon a failed notification is retried).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        // In milliseconds.
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => {
                return Err(format!(
                    "\"{text}\" has an unknown unit `{c}`: use ms, s, m, h or d, e.g. \"24h\""
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("\"{text}\" needs a number before `{c}`, e.g. \"24h\""))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("\"{text}\" is out of range"))?;
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any || total == 0 {
        return Err(format!(
            "\"{text}\" is not a duration: write e.g. \"30m\", \"24h\" or \"1h30m\""
        ));
    }
    Ok(Duration::from_millis(total))
}

/// A size in bytes: a number, or a string such as "16MiB", "500KB", "1GiB".
pub(super) fn parse_size(value: &Literal) -> Result<u64, String> {
    let text = match value {
        Literal::Number(n) if *n >= 1.0 && n.fract() == 0.0 => return Ok(*n as u64),
        Literal::String(s) => s.trim(),
        _ => return Err("must be a positive number of bytes or a string such as \"16MiB\"".into()),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" does not start with a number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "has an unknown unit `{other}`: use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("\"{text}\" is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "10", "h", "1w", "0s", "ms", "5sm"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&Literal::String("16MiB".into())), Ok(16 << 20));
        assert_eq!(parse_size(&Literal::Number(100.0)), Ok(100));
        assert!(parse_size(&Literal::String("12 parsecs".into())).is_err());
        assert!(parse_size(&Literal::Number(-1.0)).is_err());
    }
}
