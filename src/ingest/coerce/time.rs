//! DATE, TIME and TIMESTAMP_*: ISO-8601 text and Unix epoch numbers.

use super::number::{count_digits, number_unscaled, parse_decimal, DecimalError, Rounding, MAX_PRECISION};
use super::{mismatch, Brief, Cell, CoerceError, ValueRef};
use crate::ingest::reject::RejectCode;
use crate::schema::ColumnType;
use chrono::{Datelike, NaiveDate};

const MICROS_PER_DAY: i128 = 86_400_000_000;
const NANOS_PER_SECOND: i128 = 1_000_000_000;
/// chrono's day number (counted from 0001-01-01 as day 1) of 1970-01-01.
const UNIX_EPOCH_DAY_FROM_CE: i32 = 719_163;
/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999 in microseconds since the epoch.
const MIN_MICROS: i128 = -62_135_596_800_000_000;
const MAX_MICROS: i128 = 253_402_300_799_999_999;
/// Snowflake's epoch scale rule: below this magnitude a number counts seconds; each further
/// factor of 1000 moves to milliseconds, microseconds, then nanoseconds.
const EPOCH_SECONDS_BELOW: u128 = 31_536_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum TimeError {
    Invalid,
    FractionalEpoch,
    OutOfRange,
}

fn time_error(value: ValueRef<'_>, ty: ColumnType, error: TimeError) -> CoerceError {
    let brief = Brief(value);
    match error {
        TimeError::Invalid => CoerceError::new(RejectCode::InvalidDate, format!("{brief} is not a valid {ty}")),
        TimeError::FractionalEpoch => {
            let rule = if ty == ColumnType::Date { "must be whole" } else { "with a fraction must be in seconds" };
            CoerceError::new(RejectCode::InvalidDate, format!("{brief} is not a valid {ty}: epoch values {rule}"))
        }
        TimeError::OutOfRange => CoerceError::new(
            RejectCode::OutOfRange,
            format!("{brief} is out of range for {ty}, which holds years 1 to 9999"),
        ),
    }
}

pub(super) fn coerce_date(value: ValueRef<'_>, ty: ColumnType) -> Result<Cell, CoerceError> {
    let days = match value {
        ValueRef::String(s) => {
            let text = s.trim();
            match parse_iso(text.as_bytes()) {
                // A timestamp's date is its wall-clock date; any offset is dropped as for TIMESTAMP_NTZ.
                Ok(wall) => Ok(wall.days),
                Err(TimeError::Invalid) if is_epoch_text(text, false) => {
                    epoch_text_micros(text, false).and_then(micros_to_days)
                }
                Err(error) => Err(error),
            }
        }
        ValueRef::Number(n) => epoch_number_micros(n, false).and_then(micros_to_days),
        _ => return Err(mismatch(value, ty)),
    };
    days.map(Cell::Date).map_err(|e| time_error(value, ty, e))
}

pub(super) fn coerce_time(value: ValueRef<'_>, ty: ColumnType) -> Result<Cell, CoerceError> {
    let ValueRef::String(s) = value else {
        return Err(mismatch(value, ty));
    };
    let mut cursor = Cursor(s.trim().as_bytes());
    match parse_time_of_day(&mut cursor) {
        Some(micros) if cursor.0.is_empty() => Ok(Cell::Time(micros)),
        _ => Err(time_error(value, ty, TimeError::Invalid)),
    }
}

pub(super) fn coerce_timestamp(value: ValueRef<'_>, ty: ColumnType, to_utc: bool) -> Result<Cell, CoerceError> {
    let micros = match value {
        ValueRef::String(s) => {
            let text = s.trim();
            match parse_iso(text.as_bytes()) {
                Ok(wall) => wall.micros(to_utc),
                Err(TimeError::Invalid) if is_epoch_text(text, true) => epoch_text_micros(text, true),
                Err(error) => Err(error),
            }
        }
        ValueRef::Number(n) => epoch_number_micros(n, true),
        _ => return Err(mismatch(value, ty)),
    };
    micros.map(Cell::Timestamp).map_err(|e| time_error(value, ty, e))
}

fn check_micros(micros: i128) -> Result<i64, TimeError> {
    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
        return Err(TimeError::OutOfRange);
    }
    i64::try_from(micros).map_err(|_| TimeError::OutOfRange)
}

fn micros_to_days(micros: i64) -> Result<i32, TimeError> {
    i32::try_from(i128::from(micros).div_euclid(MICROS_PER_DAY)).map_err(|_| TimeError::OutOfRange)
}

/// `[+-]digits`, plus `.digits` when fractions are allowed: the string forms of an epoch value.
fn is_epoch_text(text: &str, allow_fraction: bool) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text).as_bytes();
    let int_len = count_digits(unsigned);
    match unsigned.get(int_len..) {
        Some([]) => int_len > 0,
        Some([b'.', frac @ ..]) => {
            allow_fraction && int_len > 0 && !frac.is_empty() && count_digits(frac) == frac.len()
        }
        _ => false,
    }
}

fn epoch_text_micros(text: &str, allow_fraction: bool) -> Result<i64, TimeError> {
    let nanos = parse_decimal(text.as_bytes(), MAX_PRECISION, 9, Rounding::Floor);
    epoch_micros(nanos, allow_fraction)
}

fn epoch_number_micros(n: &str, allow_fraction: bool) -> Result<i64, TimeError> {
    epoch_micros(number_unscaled(n, MAX_PRECISION, 9, Rounding::Floor), allow_fraction)
}

/// Applies the epoch scale rule to a number given in billionths of its unit (scale 9).
fn epoch_micros(billionths: Result<i128, DecimalError>, allow_fraction: bool) -> Result<i64, TimeError> {
    let billionths = billionths.map_err(|e| match e {
        DecimalError::NotNumeric => TimeError::Invalid,
        DecimalError::OutOfRange => TimeError::OutOfRange,
    })?;
    let magnitude = billionths.unsigned_abs();
    let seconds_bound = EPOCH_SECONDS_BELOW * NANOS_PER_SECOND.unsigned_abs();
    let in_seconds = magnitude < seconds_bound;
    if billionths % NANOS_PER_SECOND != 0 && !(allow_fraction && in_seconds) {
        return Err(TimeError::FractionalEpoch);
    }
    // Divisor from billionths of the input unit down to microseconds.
    let divisor: i128 = if in_seconds {
        1_000
    } else if magnitude < seconds_bound * 1_000 {
        1_000_000
    } else if magnitude < seconds_bound * 1_000_000 {
        1_000_000_000
    } else {
        1_000_000_000_000
    };
    check_micros(billionths.div_euclid(divisor))
}

/// A parsed ISO-8601 date or timestamp, before any offset is applied.
struct WallClock {
    days: i32,
    micros_of_day: i64,
    offset_seconds: Option<i32>,
}

impl WallClock {
    /// Wall-clock micros, or the UTC instant when `to_utc` (no offset means UTC already).
    fn micros(&self, to_utc: bool) -> Result<i64, TimeError> {
        let wall = i128::from(self.days) * MICROS_PER_DAY + i128::from(self.micros_of_day);
        let offset = if to_utc { self.offset_seconds.unwrap_or(0) } else { 0 };
        check_micros(wall - i128::from(offset) * 1_000_000)
    }
}

/// A byte cursor over ASCII text; every step checks bounds, so no input can make it panic.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    /// Exactly `count` ASCII digits (count <= 9) as a number.
    fn digits(&mut self, count: usize) -> Option<u32> {
        let (head, tail) = self.0.split_at_checked(count)?;
        let value = head.iter().try_fold(0u32, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0')))?;
        self.0 = tail;
        Some(value)
    }

    /// One byte out of `allowed`.
    fn eat(&mut self, allowed: &[u8]) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        allowed.contains(&first).then(|| {
            self.0 = rest;
            first
        })
    }
}

/// Parses `YYYY-MM-DD` optionally followed by `T` or a space, a time of day and an offset
/// (`Z`, `±HH:MM`, `±HHMM` or `±HH`).
fn parse_iso(text: &[u8]) -> Result<WallClock, TimeError> {
    let mut cursor = Cursor(text);
    let (year, month, day, micros_of_day, offset_seconds) = iso_fields(&mut cursor).ok_or(TimeError::Invalid)?;
    if year == 0 {
        return Err(TimeError::OutOfRange);
    }
    let year = i32::try_from(year).map_err(|_| TimeError::OutOfRange)?;
    let date = NaiveDate::from_ymd_opt(year, month, day).ok_or(TimeError::Invalid)?;
    Ok(WallClock { days: date.num_days_from_ce() - UNIX_EPOCH_DAY_FROM_CE, micros_of_day, offset_seconds })
}

type IsoFields = (u32, u32, u32, i64, Option<i32>);

fn iso_fields(c: &mut Cursor<'_>) -> Option<IsoFields> {
    let year = c.digits(4)?;
    c.eat(b"-")?;
    let month = c.digits(2)?;
    c.eat(b"-")?;
    let day = c.digits(2)?;
    if c.0.is_empty() {
        return Some((year, month, day, 0, None));
    }
    c.eat(b"Tt ")?;
    let micros_of_day = parse_time_of_day(c)?;
    let offset = if c.0.is_empty() {
        None
    } else if c.eat(b"Zz").is_some() {
        Some(0)
    } else {
        let sign = c.eat(b"+-")?;
        let hours = c.digits(2)?;
        let minutes = if c.eat(b":").is_some() || !c.0.is_empty() { c.digits(2)? } else { 0 };
        if hours > 23 || minutes > 59 {
            return None;
        }
        let seconds = i32::try_from(hours * 3600 + minutes * 60).ok()?;
        Some(if sign == b'-' { -seconds } else { seconds })
    };
    c.0.is_empty().then_some((year, month, day, micros_of_day, offset))
}

/// Parses `HH:MM[:SS[.fraction]]` with up to 9 fractional digits into micros since midnight,
/// truncating below the microsecond.
fn parse_time_of_day(c: &mut Cursor<'_>) -> Option<i64> {
    let hours = c.digits(2)?;
    c.eat(b":")?;
    let minutes = c.digits(2)?;
    let mut seconds = 0;
    let mut nanos = 0;
    if c.eat(b":").is_some() {
        seconds = c.digits(2)?;
        if c.eat(b".").is_some() {
            let len = count_digits(c.0);
            if !(1..=9).contains(&len) {
                return None;
            }
            nanos = c.digits(len)? * 10u32.pow(9 - len as u32);
        }
    }
    if hours > 23 || minutes > 59 || seconds > 59 {
        return None;
    }
    let whole_seconds = i64::from(hours * 3600 + minutes * 60 + seconds);
    Some(whole_seconds * 1_000_000 + i64::from(nanos / 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::coerce::tests::{code, err, ok, quote};

    #[test]
    fn date_parses_strings_strictly() {
        let d = ColumnType::Date;
        assert_eq!(ok("\"1970-01-01\"", d), Cell::Date(0));
        assert_eq!(ok("\"2024-02-29\"", d), Cell::Date(19_782));
        assert_eq!(ok("\"1969-12-31\"", d), Cell::Date(-1));
        assert_eq!(ok("\"0001-01-01\"", d), Cell::Date(-719_162));
        assert_eq!(ok("\"9999-12-31\"", d), Cell::Date(2_932_896));
        // A timestamp gives its wall-clock date; the offset is dropped.
        assert_eq!(ok("\"2024-03-10T23:30:00-05:00\"", d), Cell::Date(19_792));
        let e = err("\"2023-02-29\"", d);
        assert_eq!(e.code, RejectCode::InvalidDate);
        assert_eq!(e.message, "string \"2023-02-29\" is not a valid DATE");
        let bad_dates =
            ["2024-02-30", "2023-13-01", "2024-1-5", "2024/01/05", "", "yesterday", "2024-01-05T", "2024-01-05Z"];
        for bad in bad_dates.into_iter().chain(["2024-01-05T25:00", "1.5"]) {
            assert_eq!(code(&quote(bad), d), RejectCode::InvalidDate, "{bad}");
        }
        assert_eq!(code("1.5", d), RejectCode::InvalidDate);
        assert_eq!(code("\"0000-12-31\"", d), RejectCode::OutOfRange);
        for bad in ["true", "{}", "[]"] {
            assert_eq!(code(bad, d), RejectCode::TypeMismatch, "{bad}");
        }
    }

    #[test]
    fn date_takes_epoch_numbers_by_scale() {
        let d = ColumnType::Date;
        assert_eq!(ok("1709251200", d), Cell::Date(19_783)); // seconds
        assert_eq!(ok("1709251200000", d), Cell::Date(19_783)); // milliseconds
        assert_eq!(ok("1709251200000000", d), Cell::Date(19_783)); // microseconds
        assert_eq!(ok("1709251200000000000", d), Cell::Date(19_783)); // nanoseconds
        assert_eq!(ok("\"1709251200\"", d), Cell::Date(19_783));
        assert_eq!(ok("1.7092512e9", d), Cell::Date(19_783));
        assert_eq!(ok("-1", d), Cell::Date(-1));
        assert_eq!(code("\"1e30\"", d), RejectCode::InvalidDate);
        assert_eq!(code("1e30", d), RejectCode::OutOfRange);
    }

    #[test]
    fn time_parses_clock_strings() {
        let t = ColumnType::Time;
        assert_eq!(ok("\"00:00\"", t), Cell::Time(0));
        assert_eq!(ok("\"12:34\"", t), Cell::Time((12 * 3600 + 34 * 60) * 1_000_000));
        assert_eq!(ok("\"23:59:59\"", t), Cell::Time(86_399_000_000));
        assert_eq!(ok("\"12:34:56.5\"", t), Cell::Time(45_296_500_000));
        assert_eq!(ok("\"12:34:56.123456789\"", t), Cell::Time(45_296_123_456));
        for bad in ["24:00", "12:60", "12:00:60", "1:00", "12:34:56.", "12:34:56.1234567890", "12", "noon", "12:34Z"] {
            assert_eq!(code(&quote(bad), t), RejectCode::InvalidDate, "{bad}");
        }
        assert_eq!(code("3600", t), RejectCode::TypeMismatch);
        assert_eq!(code("true", t), RejectCode::TypeMismatch);
    }

    const NOON_2024_03_10: i64 = 1_710_072_000_000_000;
    const HOUR: i64 = 3_600_000_000;

    #[test]
    fn timestamp_keeps_wall_clock_for_ntz_and_converts_for_tz() {
        let (ntz, ltz, tz) = (ColumnType::TimestampNtz, ColumnType::TimestampLtz, ColumnType::TimestampTz);
        let s = "\"2024-03-10T12:00:00+02:00\"";
        assert_eq!(ok(s, ntz), Cell::Timestamp(NOON_2024_03_10));
        assert_eq!(ok(s, tz), Cell::Timestamp(NOON_2024_03_10 - 2 * HOUR));
        assert_eq!(ok(s, ltz), Cell::Timestamp(NOON_2024_03_10 - 2 * HOUR));
        assert_eq!(ok("\"2024-03-10 12:00:00-0330\"", tz), Cell::Timestamp(NOON_2024_03_10 + 7 * HOUR / 2));
        assert_eq!(ok("\"2024-03-10T12:00+05\"", tz), Cell::Timestamp(NOON_2024_03_10 - 5 * HOUR));
        assert_eq!(ok("\"2024-03-10T12:00:00Z\"", tz), Cell::Timestamp(NOON_2024_03_10));
        assert_eq!(ok("\"2024-03-10T12:00:00\"", tz), Cell::Timestamp(NOON_2024_03_10));
        assert_eq!(ok("\"2024-03-10\"", ntz), Cell::Timestamp(NOON_2024_03_10 - 12 * HOUR));
        assert_eq!(ok("\"2024-03-10t12:00:00.1234567z\"", ntz), Cell::Timestamp(NOON_2024_03_10 + 123_456));
        assert_eq!(ok("\"9999-12-31T23:59:59.999999999\"", ntz), Cell::Timestamp(MAX_MICROS as i64));
        // Moving the instant out of year 1 only matters when the offset is applied.
        assert_eq!(ok("\"0001-01-01T00:30:00+01:00\"", ntz), Cell::Timestamp(MIN_MICROS as i64 + HOUR / 2));
        assert_eq!(code("\"0001-01-01T00:30:00+01:00\"", tz), RejectCode::OutOfRange);
        assert_eq!(code("\"9999-12-31T23:30:00-01:00\"", ltz), RejectCode::OutOfRange);
    }

    #[test]
    fn timestamp_rejects_malformed_strings() {
        let ty = ColumnType::TimestampTz;
        let bad_offsets =
            ["2024-03-10T12:00+2", "2024-03-10T12:00+02:", "2024-03-10T12:00+24:00", "2024-03-10T12:00 +02"];
        for bad in bad_offsets.into_iter().chain(["2024-03-10T12", "2024-02-30T00:00", "10/03/2024", "now", "1e9", "-"])
        {
            assert_eq!(code(&quote(bad), ty), RejectCode::InvalidDate, "{bad}");
        }
        for bad in ["true", "{}", "[\"2024-03-10\"]"] {
            assert_eq!(code(bad, ty), RejectCode::TypeMismatch, "{bad}");
        }
    }

    #[test]
    fn timestamp_takes_epoch_numbers_by_scale() {
        let ty = ColumnType::TimestampNtz;
        let micros = 1_700_000_000_000_000;
        assert_eq!(ok("1700000000", ty), Cell::Timestamp(micros));
        assert_eq!(ok("1700000000000", ty), Cell::Timestamp(micros));
        assert_eq!(ok("1700000000000000", ty), Cell::Timestamp(micros));
        assert_eq!(ok("1700000000000000000", ty), Cell::Timestamp(micros));
        assert_eq!(ok("\"1700000000\"", ty), Cell::Timestamp(micros));
        assert_eq!(ok("1700000000.5", ty), Cell::Timestamp(micros + 500_000));
        assert_eq!(ok("\"1700000000.1234567\"", ty), Cell::Timestamp(micros + 123_456));
        assert_eq!(ok("-1.5", ty), Cell::Timestamp(-1_500_000));
        // Truncation below the microsecond moves back in time, also before 1970.
        assert_eq!(ok("\"-0.0000005\"", ty), Cell::Timestamp(-1));
        assert_eq!(ok("31535999999", ty), Cell::Timestamp(31_535_999_999_000_000));
        assert_eq!(ok("31536000000", ty), Cell::Timestamp(31_536_000_000_000));
        let e = err("1700000000000.5", ty);
        assert_eq!(e.code, RejectCode::InvalidDate);
        assert!(e.message.ends_with("epoch values with a fraction must be in seconds"), "{}", e.message);
        assert_eq!(code("\"-99999999999999999999999\"", ty), RejectCode::OutOfRange);
        assert_eq!(code("1e40", ty), RejectCode::OutOfRange);
        assert_eq!(code(&format!("\"{}\"", "9".repeat(50)), ty), RejectCode::OutOfRange);
    }
}
