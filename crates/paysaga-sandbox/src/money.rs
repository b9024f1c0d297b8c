//! Exact conversion between decimal JSON amounts (`10.12`) and integer minor units.
//!
//! Blaaiz and Lean put decimal numbers in their JSON. Without serde_json's
//! `arbitrary_precision` feature a JSON number is held as an `f64`, but its `Display` is the
//! shortest string that round-trips, so for amounts of up to 15 significant digits the text we
//! get back is exactly the text that was sent. All arithmetic happens on that text and on `i64`.

use std::str::FromStr;

use serde_json::{Number, Value};

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// The value is not a JSON number (or numeric string).
    #[error("amount must be a number")]
    NotANumber,
    /// More decimal places than the currency has.
    #[error("amount has more than {0} decimal places")]
    TooPrecise(u32),
    /// Zero or negative.
    #[error("amount must be greater than zero")]
    NotPositive,
    /// Does not fit in the sandbox's integer range.
    #[error("amount is too large")]
    TooLarge,
}

/// Number of decimal places of an ISO 4217 currency, from the `iso_currency` table (the one
/// the paysaga providers crate uses too); 2 for codes it does not know or that have no minor
/// unit.
pub fn exponent(currency: &str) -> u32 {
    iso_currency::Currency::from_code(&currency.trim().to_ascii_uppercase())
        .and_then(|c| c.exponent())
        .map_or(2, u32::from)
}

/// Parses a decimal amount given as a JSON number (or a string holding one) into minor units.
pub fn parse_minor(value: &Value, currency: &str) -> Result<i64, AmountError> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err(AmountError::NotANumber),
    };
    let minor = parse_decimal_str(&text, exponent(currency))?;
    if minor <= 0 {
        return Err(AmountError::NotPositive);
    }
    Ok(minor)
}

/// Parses decimal text (optionally with an exponent, `1.5e3`) into units of `10^-exp`.
fn parse_decimal_str(text: &str, exp: u32) -> Result<i64, AmountError> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, e10) = match body.find(['e', 'E']) {
        Some(i) => {
            let e: i32 = body[i + 1..].parse().map_err(|_| AmountError::NotANumber)?;
            (&body[..i], e)
        }
        None => (body, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(AmountError::NotANumber);
    }
    // All digits, and the position of the decimal point counted from the right.
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut scale: i64 = i64::try_from(frac_part.len()).map_err(|_| AmountError::TooLarge)?;
    scale -= i64::from(e10);
    let exp = i64::from(exp);
    if scale > exp {
        // Only trailing zeros may be dropped.
        let drop = usize::try_from(scale - exp).map_err(|_| AmountError::TooLarge)?;
        if drop > digits.len() {
            if digits.bytes().all(|b| b == b'0') {
                return Ok(0);
            }
            return Err(AmountError::TooPrecise(u32::try_from(exp).unwrap_or(0)));
        }
        let (keep, dropped) = digits.split_at(digits.len() - drop);
        if !dropped.bytes().all(|b| b == b'0') {
            return Err(AmountError::TooPrecise(u32::try_from(exp).unwrap_or(0)));
        }
        digits = keep.to_owned();
    } else {
        let pad = usize::try_from(exp - scale).map_err(|_| AmountError::TooLarge)?;
        if pad > 30 {
            return Err(AmountError::TooLarge);
        }
        digits.push_str(&"0".repeat(pad));
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Ok(0);
    }
    let magnitude: i64 = trimmed.parse().map_err(|_| AmountError::TooLarge)?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Formats minor units as decimal text with exactly the currency's number of decimals.
pub fn format_minor(minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs}");
    }
    let factor = 10u64.pow(exp);
    let width = usize::try_from(exp).unwrap_or(2);
    format!("{sign}{}.{:0width$}", abs / factor, abs % factor)
}

/// Formats minor units as a JSON number (`1012` USD cents -> `10.12`).
///
/// The number is built from the exact decimal text; for amounts below 10^15 minor units its
/// serialisation is that same text.
pub fn json_amount(minor: i64, currency: &str) -> Value {
    let text = format_minor(minor, currency);
    // Trailing fractional zeros are not significant for a JSON number; `10.10` -> `10.1`.
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    match Number::from_str(&text) {
        Ok(n) => Value::Number(n),
        // Unreachable for text produced above; fall back to the exact string.
        Err(_) => Value::String(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(parse_minor(&json!(10.12), "USD"), Ok(1012));
        assert_eq!(parse_minor(&json!(1000), "AED"), Ok(100_000));
        assert_eq!(parse_minor(&json!(1000.5), "AED"), Ok(100_050));
        assert_eq!(parse_minor(&json!(0.07), "NGN"), Ok(7));
        assert_eq!(parse_minor(&json!("19.99"), "USD"), Ok(1999));
        assert_eq!(parse_minor(&json!(1.234), "KWD"), Ok(1234));
        assert_eq!(
            parse_minor(&json!(123456789012.34), "USD"),
            Ok(12_345_678_901_234)
        );
        assert_eq!(
            parse_minor(&json!(10.123), "USD"),
            Err(AmountError::TooPrecise(2))
        );
        assert_eq!(parse_minor(&json!(0), "USD"), Err(AmountError::NotPositive));
        assert_eq!(
            parse_minor(&json!(-5), "USD"),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            parse_minor(&json!("abc"), "USD"),
            Err(AmountError::NotANumber)
        );
        assert_eq!(
            parse_minor(&json!(true), "USD"),
            Err(AmountError::NotANumber)
        );
        assert_eq!(parse_decimal_str("1.5e3", 2), Ok(150_000));
        assert_eq!(parse_decimal_str("1e-2", 2), Ok(1));
    }

    #[test]
    fn zero_and_three_decimal_currencies_follow_iso_4217() {
        // The sandbox knew six zero-decimal currencies: CLP, ISK and VND went into the ledger
        // at 100 times their amount.
        for c in ["JPY", "CLP", "ISK", "VND"] {
            assert_eq!(exponent(c), 0, "{c}");
            assert_eq!(parse_minor(&json!(1500), c), Ok(1500), "{c}");
            assert_eq!(
                parse_minor(&json!(1500.5), c),
                Err(AmountError::TooPrecise(0)),
                "{c}"
            );
            assert_eq!(
                serde_json::to_string(&json_amount(1500, c)).ok().as_deref(),
                Some("1500")
            );
        }
        for c in ["KWD", "BHD", "JOD"] {
            assert_eq!(exponent(c), 3, "{c}");
            assert_eq!(parse_minor(&json!(12.345), c), Ok(12_345), "{c}");
            assert_eq!(
                parse_minor(&json!(12.3456), c),
                Err(AmountError::TooPrecise(3)),
                "{c}"
            );
            assert_eq!(format_minor(12_345, c), "12.345");
        }
    }

    #[test]
    fn formats_json_numbers_exactly() {
        for (minor, text) in [
            (1012, "10.12"),
            (1010, "10.1"),
            (1000, "10"),
            (7, "0.07"),
            (12_345_678_901_234, "123456789012.34"),
            (99_999_999_999_999, "999999999999.99"),
        ] {
            let v = json_amount(minor, "USD");
            assert!(v.is_number(), "{v}");
            assert_eq!(serde_json::to_string(&v).expect("serialise"), text);
            assert_eq!(parse_minor(&v, "USD"), Ok(minor));
        }
        assert_eq!(format_minor(1012, "USD"), "10.12");
        assert_eq!(format_minor(5, "KWD"), "0.005");
        assert_eq!(format_minor(-250, "AED"), "-2.50");
    }
}
