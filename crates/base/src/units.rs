//! Sizes, durations and rates as people write them in fio job files and device URIs.
//!
//! fio treats `k`, `KB` and `KiB` alike as powers of 1024 (its default `kb_base=1024`); so do we,
//! so that a job file means the same thing to both tools.

use std::time::Duration;

/// Parses a byte count such as `4096`, `4k`, `4KiB`, `1.5g`, `0x1000`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16)
            .map_err(|_| format!("'{t}' is not a hexadecimal size"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("'{t}' does not start with a number"));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{t}' (use k, m, g, t or p)"
            ));
        }
    };
    if number.contains('.') {
        let value: f64 = number
            .parse()
            .map_err(|_| format!("'{number}' is not a number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("'{t}' is too large"));
        }
        if bytes.fract() != 0.0 {
            return Err(format!("'{t}' is not a whole number of bytes"));
        }
        Ok(bytes as u64)
    } else {
        let value: u64 = number
            .parse()
            .map_err(|_| format!("'{number}' is not a number"))?;
        value
            .checked_mul(multiplier)
            .ok_or_else(|| format!("'{t}' is too large"))
    }
}

/// Parses a duration; a bare number is in `default_unit` (fio's `runtime=10` means seconds).
pub fn parse_duration(text: &str, default_unit: Duration) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("'{t}' does not start with a number"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{number}' is not a number"))?;
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" => default_unit,
        "ns" => Duration::from_nanos(1),
        "us" | "usec" => Duration::from_micros(1),
        "ms" | "msec" => Duration::from_millis(1),
        "s" | "sec" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        other => {
            return Err(format!(
                "unknown time unit '{other}' in '{t}' (use us, ms, s, m, h or d)"
            ));
        }
    };
    let secs = value * unit.as_secs_f64();
    if !secs.is_finite() || secs > 1e12 {
        return Err(format!("'{t}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a byte count with a binary unit the way fio does: `17.2GiB`, `4096B`, `512KiB`.
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    scaled(bytes, 1024.0, &UNITS)
}

/// Formats a byte count with a decimal unit: `18.5GB`.
pub fn format_bytes_decimal(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    scaled(bytes, 1000.0, &UNITS)
}

/// Formats a count with a decimal suffix as fio prints IOPS: `4519k`, `12.3M`, `950`.
pub fn format_count(count: f64) -> String {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    scaled(count, 1000.0, &UNITS)
}

/// Keeps at most four significant digits, switching unit when the integer part would exceed them.
fn scaled(mut value: f64, base: f64, units: &[&str]) -> String {
    let mut unit = 0;
    while value >= 10_000.0 && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{:.0}{}", value, units[unit])
    } else if value >= 10.0 {
        format!("{:.1}{}", value, units[unit])
    } else {
        format!("{:.2}{}", value, units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_fio_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("4kb").unwrap(), 4096);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
    }

    #[test]
    fn bad_sizes_name_the_problem() {
        assert!(parse_size("4q").unwrap_err().contains("unknown unit 'q'"));
        assert!(parse_size("").is_err());
        assert!(parse_size("k").unwrap_err().contains("number"));
        assert!(
            parse_size("99999999999p")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_size("0.3").unwrap_err().contains("whole number"));
    }

    #[test]
    fn durations_default_to_the_given_unit() {
        assert_eq!(
            parse_duration("10", Duration::from_secs(1)).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_duration("500ms", Duration::from_secs(1)).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("2m", Duration::from_secs(1)).unwrap(),
            Duration::from_secs(120)
        );
        assert!(parse_duration("3x", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn formatting_matches_fio_style() {
        assert_eq!(format_count(4_519_000.0), "4519k");
        assert_eq!(format_count(950.0), "950");
        assert_eq!(format_bytes(17.2 * (1u64 << 30) as f64), "17.2GiB");
        assert_eq!(format_bytes(4096.0), "4096B");
        assert_eq!(format_bytes_decimal(18.5e9), "18.5GB");
    }
}
