//! Event time. The engine never reads a clock: every function takes the event
//! time it should act at. Timestamps are microseconds since the Unix epoch (UTC).

use std::cell::Cell;
use std::fmt;

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

pub const MICROS_PER_SEC: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    pub fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(MICROS_PER_SEC))
    }
    pub fn as_micros(self) -> i64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_SEC as f64
    }
    /// Days since the epoch (floor), the unit of baseline buckets.
    pub fn day(self) -> i64 {
        self.0.div_euclid(MICROS_PER_DAY)
    }
    /// Start of the tumbling window of `len_us` that contains this instant.
    pub fn window_start(self, len_us: i64) -> Timestamp {
        Timestamp(self.0 - self.0.rem_euclid(len_us))
    }
    pub fn saturating_add_us(self, us: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(us))
    }
    pub fn saturating_sub_us(self, us: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(us))
    }

    /// Parses RFC 3339: `2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.25+02:00`.
    /// `t`/`z` lower case and a space instead of `T` are accepted too.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, TimeError> {
        parse_rfc3339(s.as_bytes()).ok_or_else(|| TimeError(s.chars().take(64).collect()))
    }

    /// RFC 3339 in UTC with microseconds when they are not zero.
    pub fn to_rfc3339(self) -> String {
        let mut out = String::with_capacity(27);
        self.write_rfc3339(&mut out);
        out
    }

    pub fn write_rfc3339(self, out: &mut String) {
        use fmt::Write;
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        if micros != 0 {
            if micros % 1000 == 0 {
                let _ = write!(out, ".{:03}", micros / 1000);
            } else {
                let _ = write!(out, ".{micros:06}");
            }
        }
        out.push('Z');
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp: {0:?} (expected e.g. 2024-05-01T12:00:00Z)")]
pub struct TimeError(pub String);

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Two ASCII digits at `at`.
fn two_digits(b: &[u8], at: usize) -> Option<i64> {
    let hi = b.get(at)?.wrapping_sub(b'0');
    let lo = b.get(at + 1)?.wrapping_sub(b'0');
    (hi <= 9 && lo <= 9).then(|| i64::from(hi) * 10 + i64::from(lo))
}

/// The shape agents write, `YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`, parsed in one
/// pass; `None` for any other shape (the general parser decides those) and
/// for out-of-range fields. Equal to `parse_rfc3339` wherever it is `Some`.
fn parse_utc_plain(b: &[u8]) -> Option<Timestamp> {
    let n = b.len();
    if !(n == 20 || (22..=27).contains(&n))
        || b[n - 1] != b'Z'
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let mut micros = 0i64;
    if n > 20 {
        if b[19] != b'.' {
            return None;
        }
        for &c in &b[20..n - 1] {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            micros = micros * 10 + i64::from(d);
        }
        micros *= [100_000, 10_000, 1_000, 100, 10, 1][n - 22];
    }
    let hour = two_digits(b, 11)?;
    let minute = two_digits(b, 14)?;
    let second = two_digits(b, 17)?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = plain_date_days(b)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59);
    Some(Timestamp(secs * MICROS_PER_SEC + micros))
}

thread_local! {
    /// The last valid `YYYY-MM-DD` this thread parsed (its ten bytes) and
    /// its day number: a stream's timestamps mostly share their date.
    static LAST_DATE: Cell<(u64, u16, i64)> = const { Cell::new((0, 0, 0)) };
}

/// Days since the epoch of the `YYYY-MM-DD` that `b` starts with (its
/// dashes already checked), if it is a valid date.
fn plain_date_days(b: &[u8]) -> Option<i64> {
    let head = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let tail = u16::from_le_bytes([b[8], b[9]]);
    let (last_head, last_tail, last_days) = LAST_DATE.get();
    if head == last_head && tail == last_tail {
        return Some(last_days);
    }
    let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    let month = two_digits(b, 5)?;
    let day = two_digits(b, 8)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    LAST_DATE.set((head, tail, days));
    Some(days)
}

fn parse_rfc3339(b: &[u8]) -> Option<Timestamp> {
    parse_utc_plain(b).or_else(|| parse_rfc3339_general(b))
}

/// Every form `parse_rfc3339` accepts.
fn parse_rfc3339_general(b: &[u8]) -> Option<Timestamp> {
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale = 100_000i64;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            micros += i64::from(c - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let oh = digits(b, i + 1, 2)?;
            if b.get(i + 3) != Some(&b':') {
                return None;
            }
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            i += 6;
            let o = oh * 3600 + om * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    if i != b.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Some(Timestamp(secs * MICROS_PER_SEC + micros))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Howard Hinnant's days_from_civil.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        let a = Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
        let b = Timestamp::parse_rfc3339("2024-05-01T14:00:00+02:00").unwrap();
        let c = Timestamp::parse_rfc3339("2024-05-01T07:30:00.5-04:30").unwrap();
        assert_eq!(a, b);
        assert_eq!(c.0 - a.0, 500_000);
        assert_eq!(a.0, 1_714_564_800 * MICROS_PER_SEC);
        assert_eq!(a.to_rfc3339(), "2024-05-01T12:00:00Z");
        assert_eq!(c.to_rfc3339(), "2024-05-01T12:00:00.500Z");
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00Zjunk",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T25:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(s).is_err(), "{s}");
        }
    }

    /// The one-pass parser of the common shape agrees with the general one
    /// wherever it answers, and leaves every other form to it.
    #[test]
    fn plain_shape_agrees_with_general_parser() {
        let cases = [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.5Z",
            "2024-05-01T12:00:00.25Z",
            "2024-05-01T12:00:00.123Z",
            "2024-05-01T12:00:00.1234Z",
            "2024-05-01T12:00:00.12345Z",
            "2024-05-01T12:00:00.123456Z",
            "2024-05-01T12:00:00.1234567Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00.12a4Z",
            "2024-05-01t12:00:00Z",
            "2024-05-01T12:00:00z",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00+00:00",
            "2024-05-01T12:00:00.5-04:30",
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:61Z",
            "2024-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2000-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-05-00T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T23:60:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "+024-05-01T12:00:00Z",
            "2024-05-01T12:00:0 Z",
            "2024-05-01T1:00:00.5Z",
            "2024-05-01T12:00:00ZZ",
            "2024-05-01T12:00:00.5ZZ",
        ];
        for s in cases {
            let b = s.as_bytes();
            if let Some(t) = parse_utc_plain(b) {
                assert_eq!(Some(t), parse_rfc3339_general(b), "{s}");
            }
            assert_eq!(parse_rfc3339(b), parse_rfc3339_general(b), "{s}");
        }
        // The date cache: another date after a cached one, and back.
        for s in [
            "2024-05-01T12:00:00Z",
            "2024-05-02T12:00:00Z",
            "2024-05-01T00:00:01Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T00:00:01Z",
        ] {
            assert_eq!(
                parse_rfc3339(s.as_bytes()),
                parse_rfc3339_general(s.as_bytes()),
                "{s}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_shape_agrees_on_random_stamps(
            s in "[0-9]{4}-[0-9]{2}-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,8})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
        ) {
            let b = s.as_bytes();
            if let Some(t) = parse_utc_plain(b) {
                proptest::prop_assert_eq!(Some(t), parse_rfc3339_general(b), "{}", s);
            }
            proptest::prop_assert_eq!(parse_rfc3339(b), parse_rfc3339_general(b), "{}", s);
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let t = Timestamp(-1);
        assert_eq!(t.to_rfc3339(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
    }
}
