//! The times `--since` and `--until` accept: RFC 3339 (`2026-11-26T15:04:05Z`), a local wall-clock time
//! (`2026-11-26 15:04`, `2026-11-26 15:04:05`, `2026-11-26`; local time unless an offset or `Z`
//! follows), and a time relative to now (`10m`, `2h`, `1d`, `1h30m`: that long before now).
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};

/// What the error messages show as accepted forms.
pub const FORMS: &str =
    "expected RFC 3339 (2026-11-26T15:04:05Z), a local time (2026-11-26 15:04[:05], optionally +02:00 or Z), or a time before now (10m, 2h, 1d)";

/// Parses `s` into unix microseconds, in the local time zone and relative to the current time.
pub fn parse_when(s: &str) -> Result<i64, String> {
    parse_when_in(s, chrono::Utc::now().timestamp_micros(), &chrono::Local)
}

/// As [`parse_when`], with the current time (unix microseconds) and the local time zone given.
pub fn parse_when_in<Tz: TimeZone>(s: &str, now: i64, tz: &Tz) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{s:?} is empty: {FORMS}"));
    }
    if let Some(us) = super::log::parse_time(t) {
        return Ok(us);
    }
    // Relative: starts with a digit and has no date separators.
    if t.starts_with(|c: char| c.is_ascii_digit()) && !t.contains(['-', ':']) {
        return match humantime::parse_duration(t) {
            Ok(d) => {
                let us = i64::try_from(d.as_micros()).map_err(|_| format!("{s:?} is too long ago"))?;
                now.checked_sub(us).ok_or_else(|| format!("{s:?} is too long ago"))
            }
            Err(e) => Err(format!("{s:?}: {e}: {FORMS}")),
        };
    }
    // Wall-clock forms: `T` or a space between date and time; `Z` or a numeric offset at the end.
    let norm = t.replacen(['T', 't'], " ", 1);
    let norm = match norm.strip_suffix(['Z', 'z']) {
        Some(rest) => format!("{}+00:00", rest.trim_end()),
        None => norm,
    };
    const WITH_OFFSET: [&str; 4] =
        ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z", "%Y-%m-%d %H:%M:%S%.f %#z", "%Y-%m-%d %H:%M %#z"];
    for f in WITH_OFFSET {
        if let Ok(d) = DateTime::parse_from_str(&norm, f) {
            return Ok(d.timestamp_micros());
        }
    }
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&norm, f).ok())
        .or_else(|| NaiveDate::parse_from_str(&norm, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)));
    let Some(naive) = naive else {
        return Err(format!("{s:?} is not a time: {FORMS}"));
    };
    // Ambiguous (the hour repeated when clocks go back): the earlier; skipped (clocks go forward): error.
    match tz.from_local_datetime(&naive).earliest() {
        Some(d) => Ok(d.timestamp_micros()),
        None => Err(format!(
            "{s:?} does not exist in the local time zone (clocks went forward): give an offset, e.g. +01:00"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn accepted_forms() {
        let tz = FixedOffset::east_opt(2 * 3600).unwrap();
        let now = utc("2026-11-26T15:00:00Z");
        let p = |s: &str| parse_when_in(s, now, &tz);
        // RFC 3339, the log's own form and others.
        assert_eq!(p("2026-11-26T15:04:05Z"), Ok(utc("2026-11-26T15:04:05Z")));
        assert_eq!(p("2026-11-26T15:04:05.123456Z"), Ok(utc("2026-11-26T15:04:05.123456Z")));
        assert_eq!(p("2026-11-26T17:04:05+02:00"), Ok(utc("2026-11-26T15:04:05Z")));
        // Local wall-clock time (here UTC+2), with or without seconds, space or T.
        assert_eq!(p("2026-11-26 17:04"), Ok(utc("2026-11-26T15:04:00Z")));
        assert_eq!(p("2026-11-26 17:04:05"), Ok(utc("2026-11-26T15:04:05Z")));
        assert_eq!(p("2026-11-26T17:04"), Ok(utc("2026-11-26T15:04:00Z")));
        assert_eq!(p(" 2026-11-26 17:04:05.5 "), Ok(utc("2026-11-26T15:04:05.5Z")));
        assert_eq!(p("2026-11-26"), Ok(utc("2026-11-25T22:00:00Z")));
        // An explicit offset or Z wins over the local zone.
        assert_eq!(p("2026-11-26 15:04Z"), Ok(utc("2026-11-26T15:04:00Z")));
        assert_eq!(p("2026-11-26 15:04:05 Z"), Ok(utc("2026-11-26T15:04:05Z")));
        assert_eq!(p("2026-11-26 10:04-05:00"), Ok(utc("2026-11-26T15:04:00Z")));
        assert_eq!(p("2026-11-26 20:34:05+0530"), Ok(utc("2026-11-26T15:04:05Z")));
        assert_eq!(p("2026-11-26 16:04 +01:00"), Ok(utc("2026-11-26T15:04:00Z")));
        // Relative: that long before now.
        assert_eq!(p("10m"), Ok(now - 600_000_000));
        assert_eq!(p("2h"), Ok(now - 7_200_000_000));
        assert_eq!(p("1d"), Ok(now - 86_400_000_000));
        assert_eq!(p("90s"), Ok(now - 90_000_000));
        assert_eq!(p("1h30m"), Ok(now - 5_400_000_000));
    }

    #[test]
    fn rejected_forms_say_what_is_accepted() {
        let tz = FixedOffset::east_opt(0).unwrap();
        for bad in ["", "yesterday", "10x", "2026-13-01 00:00", "2026-11-26 25:00", "15:04", "2026/11/26 15:04", "-10m"]
        {
            let e = parse_when_in(bad, 0, &tz).unwrap_err();
            assert!(e.contains("RFC 3339") || e.contains("unknown"), "{bad}: {e}");
        }
        assert!(parse_when_in("99999999999999d", 0, &tz).is_err());
    }

    #[test]
    fn local_zone_west_of_utc() {
        let tz = FixedOffset::west_opt(3600).unwrap();
        assert_eq!(parse_when_in("2026-03-29 02:30", 0, &tz), Ok(utc("2026-03-29T03:30:00Z")));
    }
}
