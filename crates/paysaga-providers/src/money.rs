//! Exact conversion between decimal amounts on the wire and integer minor units.
//!
//! Inside paysaga an amount is an `i64` in minor units plus an ISO 4217 currency code. Blaaiz
//! and Lean put decimal numbers in major units on the wire (`10.12`, `100`, `1000.00`);
//! [`DecimalAmount`] carries such a number as its exact text and converts it with integer
//! arithmetic only. A value with more (non-zero) decimals than the currency has is rejected,
//! never rounded.
//!
//! Reading: when a response body is parsed from bytes (what the clients do), the number's text
//! is taken verbatim through `serde_json::value::RawValue`, so no float is involved. When it is
//! read from an already-parsed `serde_json::Value` (e.g. a webhook payload), serde_json has
//! stored it as an `f64` and the shortest text that round-trips is used: that is exact for
//! every amount of up to 15 significant digits.
//!
//! Writing: [`DecimalAmount`] serializes as a raw JSON number (`10.12`), again without a float.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Why an amount could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// Not a decimal number (`"abc"`, `"1..2"`, `""`, `NaN`).
    #[error("{0:?} is not a decimal amount")]
    Syntax(String),
    /// More non-zero decimals than the currency has (`10.123` USD).
    #[error("{amount} has more decimals than {currency} allows ({exponent})")]
    TooPrecise {
        /// The amount as received.
        amount: String,
        /// The currency.
        currency: String,
        /// The currency's number of decimals.
        exponent: u32,
    },
    /// Does not fit in an `i64` of minor units.
    #[error("{0} is out of range")]
    Overflow(String),
    /// A payment amount that is zero or negative.
    #[error("amount must be positive, got {0} minor units")]
    NotPositive(i64),
    /// Not a three-letter currency code.
    #[error("{0:?} is not an ISO 4217 currency code")]
    Currency(String),
}

/// Number of decimals (ISO 4217 minor unit exponent) of `currency`, from the `iso_currency`
/// table (the one the sandbox uses too); 2 for codes it does not know or that have no minor
/// unit (`XAU`, `XXX`).
///
/// ```
/// assert_eq!(paysaga_providers::money::exponent("USD"), 2);
/// assert_eq!(paysaga_providers::money::exponent("jpy"), 0);
/// assert_eq!(paysaga_providers::money::exponent("KWD"), 3);
/// ```
pub fn exponent(currency: &str) -> u32 {
    iso_currency::Currency::from_code(&currency.trim().to_ascii_uppercase())
        .and_then(|c| c.exponent())
        .map_or(2, u32::from)
}

/// Checks that `currency` looks like an ISO 4217 code (three ASCII letters).
pub fn validate_currency(currency: &str) -> Result<(), MoneyError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(MoneyError::Currency(currency.to_owned()))
    }
}

/// Converts the decimal text `amount` (major units; `10.12`, `-3`, `1e3`, `1000.00`) to minor
/// units of `currency`, exactly.
///
/// ```
/// use paysaga_providers::money::decimal_to_minor;
/// assert_eq!(decimal_to_minor("10.1", "USD"), Ok(1010));
/// assert!(decimal_to_minor("10.123", "USD").is_err());
/// ```
pub fn decimal_to_minor(amount: &str, currency: &str) -> Result<i64, MoneyError> {
    let parsed = parse_decimal(amount)?;
    let exp = exponent(currency);
    // value = digits * 10^(scale_exp); minor = value * 10^exp
    let shift = parsed.exp10 + i64::from(exp);
    let overflow = || MoneyError::Overflow(amount.to_owned());
    let digits = parsed.digits.trim_start_matches('0');
    let magnitude: i128 = if digits.is_empty() {
        0
    } else if shift >= 0 {
        if shift > 38 {
            return Err(overflow());
        }
        let m = parse_i128(digits).ok_or_else(overflow)?;
        let factor = 10_i128
            .checked_pow(u32::try_from(shift).map_err(|_| overflow())?)
            .ok_or_else(overflow)?;
        m.checked_mul(factor).ok_or_else(overflow)?
    } else {
        let cut = usize::try_from(-shift).map_err(|_| overflow())?;
        let (keep, dropped) = if cut >= digits.len() {
            ("", digits)
        } else {
            digits.split_at(digits.len() - cut)
        };
        if dropped.bytes().any(|b| b != b'0') {
            return Err(MoneyError::TooPrecise {
                amount: amount.to_owned(),
                currency: currency.to_owned(),
                exponent: exp,
            });
        }
        if keep.is_empty() {
            0
        } else {
            parse_i128(keep).ok_or_else(overflow)?
        }
    };
    let signed = if parsed.negative {
        -magnitude
    } else {
        magnitude
    };
    i64::try_from(signed).map_err(|_| overflow())
}

/// Writes `minor` units of `currency` as decimal text in major units, with trailing zeros
/// removed (`1012` USD -> `10.12`, `1050` -> `10.5`, `10000` -> `100`, `-5` -> `-0.05`).
pub fn minor_to_decimal(minor: i64, currency: &str) -> String {
    let exp = exponent(currency) as usize;
    let negative = minor < 0;
    let digits = minor.unsigned_abs().to_string();
    let (int_part, frac_part) = if exp == 0 {
        (digits, String::new())
    } else if digits.len() > exp {
        let (i, f) = digits.split_at(digits.len() - exp);
        (i.to_owned(), f.to_owned())
    } else {
        ("0".to_owned(), format!("{digits:0>exp$}"))
    };
    let frac = frac_part.trim_end_matches('0');
    let mut out = String::with_capacity(int_part.len() + frac.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(&int_part);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

fn parse_i128(digits: &str) -> Option<i128> {
    if digits.len() > 38 {
        return None;
    }
    digits.parse::<i128>().ok()
}

struct ParsedDecimal {
    negative: bool,
    /// All significant digits, integer and fraction concatenated.
    digits: String,
    /// Power of ten to apply to `digits`.
    exp10: i64,
}

fn parse_decimal(text: &str) -> Result<ParsedDecimal, MoneyError> {
    let err = || MoneyError::Syntax(text.to_owned());
    let s = text.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp_part) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err());
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    let mut exp10: i64 = match exp_part {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6
            {
                return Err(err());
            }
            e.parse::<i64>().map_err(|_| err())?
        }
    };
    exp10 -= i64::try_from(frac_part.len()).map_err(|_| err())?;
    let mut digits = String::with_capacity(int_part.len() + frac_part.len());
    digits.push_str(int_part);
    digits.push_str(frac_part);
    Ok(ParsedDecimal {
        negative,
        digits,
        exp10,
    })
}

/// A decimal amount in major units as it appears on the wire, kept as its exact text.
///
/// Deserializes from a JSON number or a numeric string; serializes as a JSON number.
/// Convert with [`DecimalAmount::to_minor`] and [`DecimalAmount::from_minor`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DecimalAmount(String);

impl DecimalAmount {
    /// Validates decimal text (`10.12`, `-3`, `1e3`); the text is kept as given (trimmed).
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let trimmed = text.trim();
        parse_decimal(trimmed)?;
        if serde_json::from_str::<&RawValue>(trimmed).is_ok() {
            Ok(DecimalAmount(trimmed.to_owned()))
        } else {
            // Valid for us but not a JSON number (`+1`, `.5`, `1.`, `007`): rebuild it.
            Ok(DecimalAmount(canonical(trimmed)?))
        }
    }

    /// The amount `minor` units of `currency` as a decimal in major units.
    pub fn from_minor(minor: i64, currency: &str) -> Self {
        DecimalAmount(minor_to_decimal(minor, currency))
    }

    /// Minor units of `currency`; fails if the amount has more decimals than the currency.
    pub fn to_minor(&self, currency: &str) -> Result<i64, MoneyError> {
        decimal_to_minor(&self.0, currency)
    }

    /// The exact text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Rebuilds decimal text into JSON-number form (`+.5` -> `0.5`, `1.e3` -> `1e3`).
fn canonical(text: &str) -> Result<String, MoneyError> {
    let p = parse_decimal(text)?;
    let digits = p.digits.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let mut out = String::new();
    if p.negative {
        out.push('-');
    }
    out.push_str(digits);
    if p.exp10 != 0 {
        out.push('e');
        out.push_str(&p.exp10.to_string());
    }
    Ok(out)
}

impl fmt::Debug for DecimalAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecimalAmount({})", self.0)
    }
}

impl fmt::Display for DecimalAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DecimalAmount {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DecimalAmount::parse(s)
    }
}

impl Serialize for DecimalAmount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DecimalAmount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // RawValue gives the number's exact text when reading from bytes/str, and the shortest
        // round-trip text when reading from a `serde_json::Value`.
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get().trim();
        let text = if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            inner
        } else {
            text
        };
        DecimalAmount::parse(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_to_minor_examples() {
        assert_eq!(decimal_to_minor("10.1", "USD"), Ok(1010));
        assert_eq!(decimal_to_minor("10.12", "USD"), Ok(1012));
        assert!(matches!(
            decimal_to_minor("10.123", "USD"),
            Err(MoneyError::TooPrecise { exponent: 2, .. })
        ));
        assert_eq!(decimal_to_minor("10.120", "USD"), Ok(1012));
        assert_eq!(decimal_to_minor("100", "NGN"), Ok(10000));
        assert_eq!(decimal_to_minor("0.5", "EUR"), Ok(50));
        assert_eq!(decimal_to_minor(".5", "EUR"), Ok(50));
        assert_eq!(decimal_to_minor("1000.00", "AED"), Ok(100000));
        assert_eq!(decimal_to_minor("-10.12", "USD"), Ok(-1012));
        assert_eq!(decimal_to_minor("-0.05", "USD"), Ok(-5));
        assert_eq!(decimal_to_minor("0", "USD"), Ok(0));
        assert_eq!(decimal_to_minor("-0", "USD"), Ok(0));
        assert_eq!(decimal_to_minor("1e3", "USD"), Ok(100000));
        assert_eq!(decimal_to_minor("1E3", "USD"), Ok(100000));
        assert_eq!(decimal_to_minor("1.5e1", "USD"), Ok(1500));
        assert_eq!(decimal_to_minor("1234e-2", "USD"), Ok(1234));
        assert!(decimal_to_minor("1234e-3", "USD").is_err());
        assert_eq!(decimal_to_minor("12", "JPY"), Ok(12));
        assert!(decimal_to_minor("12.5", "JPY").is_err());
        assert_eq!(decimal_to_minor("1.234", "KWD"), Ok(1234));
        assert_eq!(decimal_to_minor("0000012.30", "USD"), Ok(1230));
    }

    #[test]
    fn huge_values() {
        assert_eq!(
            decimal_to_minor("92233720368547758.07", "USD"),
            Ok(i64::MAX)
        );
        assert_eq!(
            decimal_to_minor("-92233720368547758.08", "USD"),
            Ok(i64::MIN)
        );
        assert!(matches!(
            decimal_to_minor("92233720368547758.08", "USD"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            decimal_to_minor("1e30", "USD"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            decimal_to_minor("1e999999", "USD"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(decimal_to_minor("1e9999999", "USD").is_err());
        assert!(matches!(
            decimal_to_minor("123456789012345678901234567890123456789012345", "USD"),
            Err(MoneyError::Overflow(_))
        ));
        // Tiny but non-zero is too precise, zero with a huge negative exponent is zero.
        assert!(matches!(
            decimal_to_minor("1e-999999", "USD"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert_eq!(decimal_to_minor("0e-999999", "USD"), Ok(0));
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "", "-", ".", "abc", "1..2", "1.2.3", "1e", "1e+", "--1", "1,5", "NaN", "inf", "0x10",
            "1 2", "e5",
        ] {
            assert!(
                matches!(decimal_to_minor(bad, "USD"), Err(MoneyError::Syntax(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn minor_to_decimal_examples() {
        assert_eq!(minor_to_decimal(1012, "USD"), "10.12");
        assert_eq!(minor_to_decimal(1010, "USD"), "10.1");
        assert_eq!(minor_to_decimal(10000, "USD"), "100");
        assert_eq!(minor_to_decimal(5, "USD"), "0.05");
        assert_eq!(minor_to_decimal(-5, "USD"), "-0.05");
        assert_eq!(minor_to_decimal(0, "USD"), "0");
        assert_eq!(minor_to_decimal(1234, "KWD"), "1.234");
        assert_eq!(minor_to_decimal(1234, "JPY"), "1234");
        assert_eq!(minor_to_decimal(i64::MAX, "USD"), "92233720368547758.07");
        assert_eq!(minor_to_decimal(i64::MIN, "USD"), "-92233720368547758.08");
        for (m, c) in [
            (1012, "USD"),
            (-7, "EUR"),
            (i64::MIN, "GBP"),
            (i64::MAX, "KWD"),
            (42, "JPY"),
        ] {
            assert_eq!(decimal_to_minor(&minor_to_decimal(m, c), c), Ok(m));
        }
    }

    #[test]
    fn exponents() {
        for c in [
            "USD", "EUR", "GBP", "CAD", "NGN", "AED", "SAR", "KES", "GHS", "XYZ",
        ] {
            assert_eq!(exponent(c), 2, "{c}");
        }
        assert_eq!(exponent("JPY"), 0);
        assert_eq!(exponent("bhd"), 3);
        assert!(validate_currency("USD").is_ok());
        assert!(validate_currency("US").is_err());
        assert!(validate_currency("U$D").is_err());
    }

    #[test]
    fn zero_and_three_decimal_currencies_follow_iso_4217() {
        // CLP, ISK and VND were missing from neither table here but from the sandbox's: both
        // now read the `iso_currency` table.
        for c in ["JPY", "CLP", "ISK", "VND", "KRW", "UGX", "XAF"] {
            assert_eq!(exponent(c), 0, "{c}");
            assert_eq!(decimal_to_minor("1500", c), Ok(1500), "{c}");
            assert!(decimal_to_minor("1500.5", c).is_err(), "{c}");
            assert_eq!(minor_to_decimal(1500, c), "1500", "{c}");
        }
        for c in ["KWD", "BHD", "JOD", "OMR", "TND"] {
            assert_eq!(exponent(c), 3, "{c}");
            assert_eq!(decimal_to_minor("12.345", c), Ok(12_345), "{c}");
            assert!(decimal_to_minor("12.3456", c).is_err(), "{c}");
            assert_eq!(minor_to_decimal(12_345, c), "12.345", "{c}");
        }
        assert_eq!(exponent("CLF"), 4);
        assert_eq!(decimal_to_minor("1.2345", "CLF"), Ok(12_345));
    }

    #[derive(Serialize, Deserialize)]
    struct Wire {
        amount: DecimalAmount,
    }

    #[test]
    fn serde_reads_exact_text_and_writes_raw_numbers() -> Result<(), serde_json::Error> {
        let w: Wire = serde_json::from_str(r#"{"amount": 10.12}"#)?;
        assert_eq!(w.amount.as_str(), "10.12");
        assert_eq!(w.amount.to_minor("AED"), Ok(1012));
        // Digits beyond f64 precision survive when parsing from text.
        let w: Wire = serde_json::from_str(r#"{"amount": 12345678901234567.89}"#)?;
        assert_eq!(w.amount.to_minor("USD"), Ok(1_234_567_890_123_456_789));
        let w: Wire = serde_json::from_str(r#"{"amount": "10.5"}"#)?;
        assert_eq!(w.amount.to_minor("USD"), Ok(1050));
        let w: Wire = serde_json::from_str(r#"{"amount": 1e3}"#)?;
        assert_eq!(w.amount.to_minor("USD"), Ok(100000));
        let w: Wire = serde_json::from_str(r#"{"amount": 100}"#)?;
        assert_eq!(w.amount.to_minor("NGN"), Ok(10000));
        assert!(serde_json::from_str::<Wire>(r#"{"amount": "ten"}"#).is_err());
        assert!(serde_json::from_str::<Wire>(r#"{"amount": true}"#).is_err());
        // From an already-parsed Value.
        let v: serde_json::Value = serde_json::from_str(r#"{"amount": 10.12}"#)?;
        let w: Wire = serde_json::from_value(v)?;
        assert_eq!(w.amount.to_minor("AED"), Ok(1012));
        // Writing.
        let out = serde_json::to_string(&Wire {
            amount: DecimalAmount::from_minor(1012, "AED"),
        })?;
        assert_eq!(out, r#"{"amount":10.12}"#);
        let out = serde_json::to_string(&Wire {
            amount: DecimalAmount::from_minor(10000, "NGN"),
        })?;
        assert_eq!(out, r#"{"amount":100}"#);
        let out = serde_json::to_string(&Wire {
            amount: DecimalAmount::parse("+.5").map_err(serde::ser::Error::custom)?,
        })?;
        let back: Wire = serde_json::from_str(&out)?;
        assert_eq!(back.amount.to_minor("USD"), Ok(50));
        Ok(())
    }
}
