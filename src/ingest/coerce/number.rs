//! NUMBER and FLOAT: exact decimal parsing of JSON numbers and numeric strings.

use super::{mismatch, Brief, Cell, CoerceError, ValueRef};
use crate::ingest::reject::RejectCode;
use crate::schema::ColumnType;

/// 10^0 ..= 10^38: every power of ten an i128 holds, indexed by exponent.
const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};
pub(super) const MAX_PRECISION: usize = 38;
/// Exponents are clamped here while parsing: far beyond any shift that can still fit 38 digits,
/// yet small enough that the shift arithmetic cannot overflow an i64.
const EXPONENT_CAP: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum DecimalError {
    NotNumeric,
    OutOfRange,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Rounding {
    /// Snowflake's rule for NUMBER columns.
    HalfAwayFromZero,
    /// Epoch timestamps: a time truncated to a coarser unit moves back, also before 1970.
    Floor,
}

pub(super) fn coerce_number(
    value: ValueRef<'_>,
    ty: ColumnType,
    precision: u8,
    scale: u8,
) -> Result<Cell, CoerceError> {
    // The schema parser guarantees 1..=38 and scale <= precision; clamping keeps indexing total anyway.
    let precision = usize::from(precision).min(MAX_PRECISION);
    let scale = usize::from(scale).min(precision);
    let rounding = Rounding::HalfAwayFromZero;
    let result = match value {
        ValueRef::Number(text) => number_unscaled(text, precision, scale, rounding),
        ValueRef::String(s) => parse_decimal(s.trim().as_bytes(), precision, scale, rounding),
        _ => return Err(mismatch(value, ty)),
    };
    match result {
        Ok(unscaled) => Ok(Cell::Decimal(unscaled)),
        Err(DecimalError::NotNumeric) => Err(mismatch(value, ty)),
        Err(DecimalError::OutOfRange) => Err(CoerceError::new(
            RejectCode::OutOfRange,
            format!(
                "{} is out of range for {ty}, which holds at most {} digits before the point",
                Brief(value),
                precision - scale
            ),
        )),
    }
}

/// A JSON number (its text as sent) as an unscaled integer at `scale`, exactly: 1.005 means
/// 1.005 and not the binary 1.00499999…, and 38 digits are 38 digits.
pub(super) fn number_unscaled(
    text: &str,
    precision: usize,
    scale: usize,
    rounding: Rounding,
) -> Result<i128, DecimalError> {
    if let Ok(int) = text.parse::<i64>() {
        return i128::from(int)
            .checked_mul(POW10[scale])
            .filter(|v| v.unsigned_abs() < POW10[precision].unsigned_abs())
            .ok_or(DecimalError::OutOfRange);
    }
    parse_decimal(text.as_bytes(), precision, scale, rounding)
}

/// Parses `[+-]digits[.digits][(e|E)[+-]digits]` into an unscaled integer at `scale` that must
/// have at most `precision` digits. Works on the digit text, so it is exact at any magnitude.
pub(super) fn parse_decimal(
    text: &[u8],
    precision: usize,
    scale: usize,
    rounding: Rounding,
) -> Result<i128, DecimalError> {
    let (negative, rest) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    let (int_digits, rest) = rest.split_at(count_digits(rest));
    let (frac_digits, rest) = match rest {
        [b'.', after @ ..] => after.split_at(count_digits(after)),
        _ => (&[][..], rest),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(DecimalError::NotNumeric);
    }
    let exponent = match rest {
        [] => 0,
        [b'e' | b'E', exp @ ..] => parse_exponent(exp).ok_or(DecimalError::NotNumeric)?,
        _ => return Err(DecimalError::NotNumeric),
    };

    let digits = || int_digits.iter().chain(frac_digits).map(|b| b - b'0');
    let leading_zeros = digits().take_while(|&d| d == 0).count();
    let significant = int_digits.len() + frac_digits.len() - leading_zeros;
    if significant == 0 {
        return Ok(0);
    }
    let significant_digits = || digits().skip(leading_zeros);
    let accumulate = |count: usize| {
        significant_digits()
            .take(count)
            .try_fold(0i128, |acc, d| acc.checked_mul(10)?.checked_add(i128::from(d)))
            .ok_or(DecimalError::OutOfRange)
    };
    let too_long = |digit_count: u64| digit_count > precision as u64;

    // The value is D × 10^shift units of the scale, D being the significant digits as an integer.
    let frac_len = i64::try_from(frac_digits.len()).map_err(|_| DecimalError::OutOfRange)?;
    let shift = exponent.saturating_sub(frac_len).saturating_add(scale as i64);
    let magnitude = if let Ok(up) = u64::try_from(shift) {
        // D has no leading zero, so D × 10^up has exactly significant + up digits.
        if too_long((significant as u64).saturating_add(up)) {
            return Err(DecimalError::OutOfRange);
        }
        let pow = usize::try_from(up).ok().and_then(|up| POW10.get(up)).ok_or(DecimalError::OutOfRange)?;
        accumulate(significant)?.checked_mul(*pow).ok_or(DecimalError::OutOfRange)?
    } else {
        let dropped = shift.unsigned_abs();
        let keep = (significant as u64).saturating_sub(dropped) as usize;
        if too_long(keep as u64) {
            return Err(DecimalError::OutOfRange);
        }
        let kept = accumulate(keep)?;
        let mut tail = significant_digits().skip(keep);
        let round_up = match rounding {
            // When more digits are dropped than exist, the first dropped digit is an implied zero.
            Rounding::HalfAwayFromZero => dropped <= significant as u64 && tail.next().is_some_and(|d| d >= 5),
            Rounding::Floor => negative && tail.any(|d| d != 0),
        };
        if round_up {
            kept.checked_add(1).ok_or(DecimalError::OutOfRange)?
        } else {
            kept
        }
    };
    if magnitude >= POW10[precision] {
        return Err(DecimalError::OutOfRange);
    }
    Ok(if negative { -magnitude } else { magnitude })
}

pub(super) fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Parses an exponent, saturating at ±[`EXPONENT_CAP`] so `1e400000000000` cannot overflow.
fn parse_exponent(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    if digits.is_empty() {
        return None;
    }
    let magnitude = digits
        .iter()
        .try_fold(0i64, |acc, &b| b.is_ascii_digit().then(|| (acc * 10 + i64::from(b - b'0')).min(EXPONENT_CAP)))?;
    Some(if negative { -magnitude } else { magnitude })
}

pub(super) fn coerce_float(value: ValueRef<'_>, ty: ColumnType) -> Result<Cell, CoerceError> {
    let out_of_range =
        || CoerceError::new(RejectCode::OutOfRange, format!("{} is out of range for {ty}", Brief(value)));
    match value {
        ValueRef::Number(text) => {
            text.parse::<f64>().ok().filter(|f| f.is_finite()).map(Cell::Float).ok_or_else(out_of_range)
        }
        ValueRef::String(s) => {
            let text = s.trim();
            let float: f64 = text.parse().map_err(|_| mismatch(value, ty))?;
            // Rust parses "1e400" as infinity; only an explicit "inf"/"infinity" may mean that.
            let spelled_infinite = text.trim_start_matches(['+', '-']).starts_with(['i', 'I']);
            if float.is_infinite() && !spelled_infinite {
                return Err(out_of_range());
            }
            Ok(Cell::Float(float))
        }
        _ => Err(mismatch(value, ty)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::coerce::tests::{code, err, ok, quote, INT};

    const NUM12_2: ColumnType = ColumnType::Number { precision: 12, scale: 2 };

    fn num(precision: u8, scale: u8) -> ColumnType {
        ColumnType::Number { precision, scale }
    }

    #[test]
    fn number_accepts_numbers_and_numeric_strings() {
        assert_eq!(ok("12.34", NUM12_2), Cell::Decimal(1234));
        assert_eq!(ok("\" 12.34 \"", NUM12_2), Cell::Decimal(1234));
        assert_eq!(ok("-7", NUM12_2), Cell::Decimal(-700));
        assert_eq!(ok("\"+5\"", INT), Cell::Decimal(5));
        assert_eq!(ok("\".5\"", NUM12_2), Cell::Decimal(50));
        assert_eq!(ok("\"5.\"", NUM12_2), Cell::Decimal(500));
        assert_eq!(ok("\"-0\"", INT), Cell::Decimal(0));
        assert_eq!(ok("9999999999.99", NUM12_2), Cell::Decimal(999_999_999_999));
    }

    #[test]
    fn number_rounds_half_away_from_zero() {
        assert_eq!(ok("\"1.005\"", NUM12_2), Cell::Decimal(101));
        // The JSON float 1.005 is parsed from its text, not from the binary 1.00499999…
        assert_eq!(ok("1.005", NUM12_2), Cell::Decimal(101));
        assert_eq!(ok("\"-1.005\"", NUM12_2), Cell::Decimal(-101));
        assert_eq!(ok("\"1.004\"", NUM12_2), Cell::Decimal(100));
        assert_eq!(ok("\"-2.5\"", INT), Cell::Decimal(-3));
        assert_eq!(ok("\"2.4999\"", INT), Cell::Decimal(2));
        assert_eq!(ok("\"-0.004\"", NUM12_2), Cell::Decimal(0));
        assert_eq!(ok("\"0.005\"", NUM12_2), Cell::Decimal(1));
        assert_eq!(ok("\"0.0049\"", NUM12_2), Cell::Decimal(0));
    }

    #[test]
    fn number_rejects_too_many_integer_digits() {
        let e = err("10000000000", NUM12_2);
        assert_eq!(e.code, RejectCode::OutOfRange);
        assert_eq!(
            e.message,
            "number 10000000000 is out of range for NUMBER(12,2), which holds at most 10 digits before the point"
        );
        assert_eq!(code("\"-10000000000\"", NUM12_2), RejectCode::OutOfRange);
        // Rounding up can add the digit that no longer fits.
        assert_eq!(code("\"9999999999.995\"", NUM12_2), RejectCode::OutOfRange);
        assert_eq!(code("1e300", NUM12_2), RejectCode::OutOfRange);
        assert_eq!(ok("\"0.5\"", num(2, 2)), Cell::Decimal(50));
        assert_eq!(code("\"1\"", num(2, 2)), RejectCode::OutOfRange);
    }

    #[test]
    fn number_rejects_non_numeric_values() {
        let e = err("\"abc\"", NUM12_2);
        assert_eq!(e.code, RejectCode::TypeMismatch);
        assert_eq!(e.message, "expected NUMBER(12,2), got string \"abc\"");
        for bad in ["", " ", "1.2.3", ".", "-", "e5", "1e", "1e+", "NaN", "inf", "1_000", "0x10", "1 2", "١٢"] {
            assert_eq!(code(&quote(bad), NUM12_2), RejectCode::TypeMismatch, "{bad}");
        }
        for bad in ["true", "{}", "[1]"] {
            assert_eq!(code(bad, NUM12_2), RejectCode::TypeMismatch, "{bad}");
        }
    }

    #[test]
    fn json_numbers_are_exact_at_any_length() {
        // Parsed from their text, never through a double: these lose digits as f64.
        let max = "9".repeat(38);
        assert_eq!(ok(&max, INT), Cell::Decimal(POW10[38] - 1));
        assert_eq!(ok(&format!("-{max}"), INT), Cell::Decimal(1 - POW10[38]));
        assert_eq!(ok("18446744073709551617", INT), Cell::Decimal(18_446_744_073_709_551_617));
        let many = "1234567890123456789012345678.0123456789";
        assert_eq!(ok(many, num(38, 10)), Cell::Decimal(12_345_678_901_234_567_890_123_456_780_123_456_789));
        assert_eq!(ok("0.30000000000000000001", num(38, 20)), Cell::Decimal(30_000_000_000_000_000_001));
        assert_eq!(code(&format!("1{max}"), INT), RejectCode::OutOfRange);
        assert_eq!(code(&max, num(38, 1)), RejectCode::OutOfRange);
    }

    #[test]
    fn number_handles_38_digits() {
        let max = "9".repeat(38);
        assert_eq!(ok(&format!("\"{max}\""), INT), Cell::Decimal(POW10[38] - 1));
        assert_eq!(ok(&format!("\"-{max}\""), INT), Cell::Decimal(1 - POW10[38]));
        assert_eq!(ok(&format!("\"0000{max}\""), INT), Cell::Decimal(POW10[38] - 1));
        assert_eq!(code(&format!("\"1{max}\""), INT), RejectCode::OutOfRange);
        assert_eq!(code(&format!("\"{max}\""), num(38, 2)), RejectCode::OutOfRange);
        assert_eq!(ok(&format!("\"0.{max}\""), num(38, 38)), Cell::Decimal(POW10[38] - 1));
        // 38 nines then a 5 in the 39th place rounds up past 38 digits.
        assert_eq!(code(&format!("\"0.{max}5\""), num(38, 38)), RejectCode::OutOfRange);
    }

    #[test]
    fn number_accepts_exponents_without_blowing_up() {
        assert_eq!(ok("\"1e3\"", INT), Cell::Decimal(1000));
        assert_eq!(ok("\"1.5E-2\"", num(10, 3)), Cell::Decimal(15));
        assert_eq!(ok("\"1.5E-2\"", NUM12_2), Cell::Decimal(2));
        assert_eq!(ok("\"12.34e+1\"", INT), Cell::Decimal(123));
        assert_eq!(ok("\"123e-2\"", NUM12_2), Cell::Decimal(123));
        assert_eq!(ok("1E2", NUM12_2), Cell::Decimal(10_000));
        assert_eq!(ok("1.5e-7", NUM12_2), Cell::Decimal(0));
        assert_eq!(code("\"1e400000\"", INT), RejectCode::OutOfRange);
        assert_eq!(code("\"1e99999999999999999999999\"", INT), RejectCode::OutOfRange);
        assert_eq!(ok("\"1e-400000\"", INT), Cell::Decimal(0));
        assert_eq!(ok("\"-1e-99999999999999999999999\"", INT), Cell::Decimal(0));
        assert_eq!(ok("\"0e99999999999999\"", INT), Cell::Decimal(0));
        assert_eq!(ok("\"5e-1\"", INT), Cell::Decimal(1));
        assert_eq!(ok("\"5e-2\"", INT), Cell::Decimal(0));
    }

    #[test]
    fn number_takes_whole_integer_range() {
        assert_eq!(ok(&u64::MAX.to_string(), INT), Cell::Decimal(i128::from(u64::MAX)));
        assert_eq!(ok(&i64::MIN.to_string(), INT), Cell::Decimal(i128::from(i64::MIN)));
        assert_eq!(code(&u64::MAX.to_string(), num(19, 0)), RejectCode::OutOfRange);
        assert_eq!(code(&u64::MAX.to_string(), num(38, 20)), RejectCode::OutOfRange);
        assert_eq!(ok(&u64::MAX.to_string(), num(38, 18)), Cell::Decimal(i128::from(u64::MAX) * POW10[18]));
    }

    #[test]
    fn float_accepts_numbers_and_float_strings() {
        assert_eq!(ok("1.5", ColumnType::Float), Cell::Float(1.5));
        assert_eq!(ok("-3", ColumnType::Float), Cell::Float(-3.0));
        assert_eq!(ok("\" 2.5e3 \"", ColumnType::Float), Cell::Float(2500.0));
        assert_eq!(ok("\"-Infinity\"", ColumnType::Float), Cell::Float(f64::NEG_INFINITY));
        assert_eq!(ok("\"inf\"", ColumnType::Float), Cell::Float(f64::INFINITY));
        assert!(matches!(ok("\"NaN\"", ColumnType::Float), Cell::Float(f) if f.is_nan()));
        assert_eq!(code("\"1e400\"", ColumnType::Float), RejectCode::OutOfRange);
        for bad in ["\"abc\"", "\"\"", "true", "[]", "{}"] {
            assert_eq!(code(bad, ColumnType::Float), RejectCode::TypeMismatch, "{bad}");
        }
    }
}
