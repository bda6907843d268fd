//! What `report` puts first (issue 12): whether a group's transactions come at a regular interval,
//! time bins as wide as the capture calls for, the prefixes of Django cache keys, and the wording of
//! the headline. Pure functions and small bounded aggregates, used by `report`.
use std::collections::BTreeMap;

/// Relative width of an interval histogram bin: 2 %.
const STEP: f64 = 1.02;
/// A period is claimed only from at least this many intervals (4 transactions).
pub const MIN_INTERVALS: u64 = 3;
/// ... and when the middle half of the intervals lies within this ratio (75th / 25th percentile).
pub const MAX_SPREAD: f64 = 1.25;

/// The intervals between a group's transactions (commit times), in a log-spaced histogram: memory is
/// bounded by the number of distinct 2 % bins (about 1,400 from a microsecond to a year), not by the
/// number of transactions.
#[derive(Debug, Default, Clone)]
pub struct Period {
    last: Option<i64>,
    zero: u64,
    /// Bin → (intervals, their sum in microseconds): a bin's value is its mean, exact when the
    /// intervals are regular.
    hist: BTreeMap<i32, (u64, f64)>,
    n: u64,
}

impl Period {
    /// One transaction at `t` (unix microseconds). Times that go backwards (logs given out of order)
    /// are not intervals.
    pub fn add(&mut self, t: i64) {
        match self.last {
            Some(l) if t >= l => {
                let d = t - l;
                if d == 0 {
                    self.zero += 1;
                } else {
                    let b = self.hist.entry(((d as f64).ln() / STEP.ln()).floor() as i32).or_default();
                    b.0 += 1;
                    b.1 += d as f64;
                }
                self.n += 1;
                self.last = Some(t);
            }
            Some(_) => {}
            None => self.last = Some(t),
        }
    }

    /// The interval (microseconds) at quantile `q` (the mean of its 2 % bin).
    fn quantile(&self, q: f64) -> f64 {
        let rank = ((self.n.saturating_sub(1)) as f64 * q).round() as u64;
        if rank < self.zero {
            return 0.0;
        }
        let mut seen = self.zero;
        let mut value = 0.0;
        for &(c, sum) in self.hist.values() {
            seen += c;
            value = sum / c as f64;
            if rank < seen {
                break;
            }
        }
        value
    }

    /// The typical interval in seconds (the median, three significant digits) when the intervals are
    /// regular: at least [`MIN_INTERVALS`] of them and the middle half within [`MAX_SPREAD`]. `None`
    /// otherwise: an irregular group gets no period rather than a misleading one.
    pub fn period_s(&self) -> Option<f64> {
        if self.n < MIN_INTERVALS {
            return None;
        }
        let (p25, p50, p75) = (self.quantile(0.25), self.quantile(0.5), self.quantile(0.75));
        if p25 <= 0.0 || p75 / p25 > MAX_SPREAD {
            return None;
        }
        Some(significant(p50 / 1e6, 3))
    }
}

fn significant(v: f64, digits: i32) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(digits - 1 - v.log10().floor() as i32);
    (v * scale).round() / scale
}

/// "1.0 s", "250 ms", "5.0 min", "2.0 h", "1.0 d".
pub fn fmt_period(s: f64) -> String {
    if s < 0.9995 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 86400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86400.0)
    }
}

/// "70 %", "4.5 %" (one decimal under 10 %), "0.1 %".
pub fn fmt_share(pct: f64) -> String {
    if pct >= 10.0 || pct == pct.round() {
        format!("{pct:.0} %")
    } else {
        format!("{pct:.1} %")
    }
}

/// Bin widths in seconds; each divides the next, so bins coarsen by merging.
pub const WIDTHS: [i64; 14] = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400, 604800];
/// Bins held while reading: past this span the bins are merged into the next width.
pub const MAX_HELD: i64 = 4000;
/// Bins shown: the narrowest width that covers the commits in fewer bins than this.
pub const MAX_SHOWN: i64 = 150;

/// Rows and truncates in a stretch of time, by session (`None`: not attributed).
#[derive(Debug, Default, Clone)]
pub struct BinAgg {
    pub rows: u64,
    pub truncates: u64,
    pub sessions: Vec<(Option<usize>, u64)>,
}

impl BinAgg {
    pub fn add(&mut self, session: Option<usize>, rows: u64, truncates: u64) {
        self.rows += rows;
        self.truncates += truncates;
        match self.sessions.iter_mut().find(|s| s.0 == session) {
            Some(s) => s.1 += rows,
            None => self.sessions.push((session, rows)),
        }
    }

    fn merge(&mut self, o: BinAgg) {
        self.truncates += o.truncates;
        for (s, r) in o.sessions {
            self.add(s, r, 0);
        }
    }
}

/// Time bins whose width adapts to the span of the commits: one second for a one-minute capture,
/// minutes for hours, hours for weeks. At most [`MAX_HELD`] bins are held.
#[derive(Debug, Default)]
pub struct Bins {
    level: usize,
    map: BTreeMap<i64, BinAgg>,
}

impl Bins {
    fn width_us(level: usize) -> i64 {
        WIDTHS[level] * 1_000_000
    }

    /// The bin of time `t` (unix microseconds), coarsening first if it would widen the span held past
    /// [`MAX_HELD`] bins.
    pub fn at(&mut self, t: i64) -> &mut BinAgg {
        loop {
            let k = t.div_euclid(Self::width_us(self.level));
            let lo = self.map.keys().next().map_or(k, |&f| f.min(k));
            let hi = self.map.keys().next_back().map_or(k, |&l| l.max(k));
            if hi - lo < MAX_HELD || self.level + 1 == WIDTHS.len() {
                return self.map.entry(k).or_default();
            }
            self.coarsen(self.level + 1);
        }
    }

    fn coarsen(&mut self, level: usize) {
        let (old, new) = (WIDTHS[self.level], WIDTHS[level]);
        self.level = level;
        for (k, v) in std::mem::take(&mut self.map) {
            self.map.entry((k * old).div_euclid(new)).or_default().merge(v);
        }
    }

    /// The width shown (seconds) and the non-empty bins at that width, by start time (microseconds).
    pub fn shown(&self) -> (i64, Vec<(i64, BinAgg)>) {
        let (Some(&lo), Some(&hi)) = (self.map.keys().next(), self.map.keys().next_back()) else {
            return (WIDTHS[self.level], Vec::new());
        };
        let span_s = (hi - lo + 1) * WIDTHS[self.level];
        let mut level = self.level;
        while level + 1 < WIDTHS.len() && span_s / WIDTHS[level] >= MAX_SHOWN {
            level += 1;
        }
        let (old, new) = (WIDTHS[self.level], WIDTHS[level]);
        let mut out: BTreeMap<i64, BinAgg> = BTreeMap::new();
        for (k, v) in &self.map {
            out.entry((k * old).div_euclid(new)).or_default().merge(v.clone());
        }
        (new, out.into_iter().map(|(k, v)| (k * Self::width_us(level), v)).collect())
    }
}

/// "second", "5 s", "minute", "5 min", "hour", "3 h", "day", "week".
pub fn fmt_width(w: i64) -> String {
    match w {
        1 => "second".into(),
        60 => "minute".into(),
        3600 => "hour".into(),
        86400 => "day".into(),
        604800 => "week".into(),
        w if w < 60 => format!("{w} s"),
        w if w < 3600 => format!("{} min", w / 60),
        w => format!("{} h", w / 3600),
    }
}

/// A Django cache key as the database cache stores it, `KEY_PREFIX:VERSION:key` (`make_key`; the
/// default prefix is empty, so `:1:key`): the prefix, the version and the key. The version is the first
/// run of digits between two colons, so a `KEY_PREFIX` may itself contain colons.
pub fn django_parts(s: &str) -> Option<(&str, &str, &str)> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(':') {
        let at = from + p;
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let end = at + 1 + digits;
        if (1..=9).contains(&digits) && b.get(end) == Some(&b':') {
            return Some((&s[..at], &s[at + 1..end], &s[end + 1..]));
        }
        from = at + 1;
    }
    None
}

/// Separators between the words of a cache key.
const SEPARATORS: [char; 5] = [':', '_', '.', '-', '/'];
/// A word this long is an identifier or a hash, not part of the prefix.
const MAX_WORD: usize = 20;

/// The key's own prefix: its leading words (separated by `:` `_` `.` `-` `/`) up to the first word
/// that holds a digit or is longer than 20 characters — the variable part (an id, a hash, a session
/// key). `user_session_abc123` → `user_session`; `views.decorators.cache.cache_page.3f2a…` →
/// `views.decorators.cache.cache_page`; `5f3a…` → `` (the key is all variable).
pub fn own_prefix(key: &str) -> &str {
    let mut end = 0;
    let mut start = 0;
    loop {
        let sep = key[start..].find(SEPARATORS).map(|p| start + p);
        let word = &key[start..sep.unwrap_or(key.len())];
        if word.is_empty() || word.chars().count() > MAX_WORD || word.chars().any(|c| c.is_ascii_digit()) {
            return &key[..end];
        }
        end = start + word.len();
        match sep {
            Some(p) => start = p + 1,
            None => return &key[..end],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period_of(times_s: &[f64]) -> Option<f64> {
        let mut p = Period::default();
        for t in times_s {
            p.add((t * 1e6) as i64);
        }
        p.period_s()
    }

    #[test]
    fn regular_intervals_have_a_period() {
        let every_second: Vec<f64> = (0..60).map(|i| 100.0 + i as f64 * 1.0 + (i % 3) as f64 * 0.004).collect();
        let p = period_of(&every_second).unwrap();
        assert!((p - 1.0).abs() < 0.03, "{p}");
        assert_eq!(fmt_period(p), "1.0 s");
        let every_5min: Vec<f64> = (0..10).map(|i| i as f64 * 300.0).collect();
        assert_eq!(fmt_period(period_of(&every_5min).unwrap()), "5.0 min");
    }

    #[test]
    fn irregular_or_few_intervals_have_none() {
        assert_eq!(period_of(&[0.0, 1.0, 2.0]), None, "two intervals");
        assert_eq!(period_of(&[0.0, 1.0, 5.0, 5.5, 20.0, 21.0, 40.0, 43.0]), None);
        assert_eq!(period_of(&[0.0, 0.0, 0.0, 0.0, 1.0]), None, "simultaneous commits");
        // Out of order times are skipped, not negative intervals.
        assert_eq!(period_of(&[10.0, 5.0, 11.0, 12.0, 13.0]).map(fmt_period).as_deref(), Some("1.0 s"));
    }

    #[test]
    fn shares_and_widths() {
        assert_eq!(fmt_share(70.0), "70 %");
        assert_eq!(fmt_share(69.96), "70 %");
        assert_eq!(fmt_share(4.54), "4.5 %");
        assert_eq!(fmt_share(100.0), "100 %");
        assert_eq!(fmt_width(1), "second");
        assert_eq!(fmt_width(300), "5 min");
        assert_eq!(fmt_width(10800), "3 h");
        for w in WIDTHS.windows(2) {
            assert_eq!(w[1] % w[0], 0, "{w:?}");
        }
    }

    fn shown_width(span_s: i64, step_s: i64) -> (i64, usize, u64) {
        let mut b = Bins::default();
        let t0 = 1_795_000_000_000_000i64;
        let mut t = 0;
        while t <= span_s {
            b.at(t0 + t * 1_000_000).add(Some(0), 1, 0);
            t += step_s;
        }
        let (w, bins) = b.shown();
        (w, bins.len(), bins.iter().map(|b| b.1.rows).sum())
    }

    #[test]
    fn bins_adapt_to_the_span() {
        assert_eq!(shown_width(60, 1), (1, 61, 61), "a one-minute capture: seconds");
        assert_eq!(shown_width(600, 1).0, 5);
        assert_eq!(shown_width(3 * 3600, 1).0, 300, "hours: minutes");
        let (w, n, rows) = shown_width(30 * 86400, 60);
        assert_eq!(w, 21600);
        assert!(n <= MAX_SHOWN as usize);
        assert_eq!(rows, 30 * 1440 + 1, "coarsening keeps every row");
    }

    #[test]
    fn django_keys() {
        assert_eq!(django_parts(":1:user_session_abc123"), Some(("", "1", "user_session_abc123")));
        assert_eq!(django_parts("site:prod:12:k"), Some(("site:prod", "12", "k")));
        assert_eq!(django_parts("report:1"), None);
        assert_eq!(django_parts("a:b:c"), None);
        assert_eq!(django_parts("::"), None);
        assert_eq!(own_prefix("user_session_abc123"), "user_session");
        assert_eq!(own_prefix("views.decorators.cache.cache_page.3f2a9c"), "views.decorators.cache.cache_page");
        assert_eq!(own_prefix("5f3a9c0d"), "");
        assert_eq!(own_prefix("sessions"), "sessions");
        assert_eq!(own_prefix("rate_limit:ip"), "rate_limit:ip");
        assert_eq!(own_prefix("a_verylongwordwithoutdigitsinside"), "a");
        for s in ["", ":", "é:1:é_1", "_", "x__y"] {
            let _ = own_prefix(s);
            let _ = django_parts(s);
        }
    }
}
