//! Calendar arithmetic in UTC for query periods and month buckets (no time-zone database
//! needed: the ledger bills in UTC).

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The first millisecond of the UTC month holding `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let (year, month, _) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    days_from_civil(year, month, 1) * MS_PER_DAY
}

/// `ms` as RFC 3339 in UTC, to the second (`2026-05-01T13:04:05Z`).
pub fn format_rfc3339(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let second_of_day = ms.rem_euclid(MS_PER_DAY) / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Parses a query's time bound into unix milliseconds: unix seconds (`1767225600`), a UTC
/// date (`2026-01-01`, its midnight) or a UTC date-time (`2026-01-01T08:30:00Z`).
pub fn parse_time(text: &str) -> Option<i64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().ok()?.checked_mul(1000);
    }
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = parts.next().filter(|p| p.len() == 4)?.parse().ok()?;
    let month: u32 = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    let day: u32 = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * MS_PER_DAY;
    if let Some(time) = time {
        let fields: Vec<&str> = time.split(':').collect();
        let [hour, minute, second] = fields.as_slice() else {
            return None;
        };
        let parse = |field: &str, max: i64| {
            field
                .parse::<i64>()
                .ok()
                .filter(|v| field.len() == 2 && (0..max).contains(v))
        };
        ms += (parse(hour, 24)? * 3600 + parse(minute, 60)? * 60 + parse(second, 60)?) * 1000;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_day_counts() {
        for days in [-1, 0, 59, 11_016, 19_782, 20_454, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn parses_each_accepted_form() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1767225600"), Some(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01"), Some(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01T08:30:05Z"), Some(1_767_256_205_000));
        assert_eq!(parse_time("2024-02-29"), Some(1_709_164_800_000));
    }

    #[test]
    fn rejects_malformed_times() {
        for bad in [
            "",
            "2026-13-01",
            "2025-02-29",
            "2026-1-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T08:30:00",
            "yesterday",
            "-5",
            "99999999999999999999",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn month_start_and_formatting() {
        let ms = parse_time("2026-03-17T10:11:12Z").unwrap();
        assert_eq!(format_rfc3339(ms), "2026-03-17T10:11:12Z");
        assert_eq!(format_rfc3339(month_start_ms(ms)), "2026-03-01T00:00:00Z");
        assert_eq!(
            month_start_ms(parse_time("2026-03-01").unwrap()),
            parse_time("2026-03-01").unwrap()
        );
    }
}
