//! Typed parameter values of the provider step kinds ([`paysaga_core::Step`]): each checks its
//! rule when deserialized (so at start for values the input gives, and at every run), and
//! declares its JSON Schema. Errors say what is wrong; the typed adapter puts the field's path
//! in front (`destination.iban: must not be empty`).
//!
//! ```
//! use paysaga_providers::steps::parameters::{Amount, Currency, Id};
//!
//! let amount: Amount = serde_json::from_value(serde_json::json!(12_500)).unwrap();
//! assert_eq!(amount.get(), 12_500);
//! assert!(serde_json::from_value::<Amount>(serde_json::json!(0)).is_err());
//! let eur: Currency = serde_json::from_value(serde_json::json!("eur")).unwrap();
//! assert_eq!(eur.as_str(), "EUR");
//! assert!(serde_json::from_value::<Id>(serde_json::json!("..")).is_err());
//! ```

use std::borrow::Cow;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::common::{is_email, kind};

/// A value type parsed from JSON by `parse`, with an inline JSON Schema.
macro_rules! parsed {
    ($ty:ident, $name:literal, $schema:tt) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = Value::deserialize(d)?;
                $ty::parse(&v).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// A non-empty string, trimmed, or what is wrong with `v`.
pub(crate) fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::String(_) => Err("must not be empty".to_owned()),
        other => Err(format!("must be a string (got {})", kind(other))),
    }
}

/// A non-empty string, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    fn parse(v: &Value) -> Result<Self, String> {
        text(v).map(Text)
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
parsed!(Text, "Text", {"type": "string", "minLength": 1});

/// A non-empty string of at most `MAX` characters (a provider's limit), trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortText<const MAX: usize>(pub String);

impl<const MAX: usize> ShortText<MAX> {
    fn parse(v: &Value) -> Result<Self, String> {
        let s = text(v)?;
        let n = s.chars().count();
        if n > MAX {
            return Err(format!(
                "must be at most {MAX} characters (the provider's limit; got {n})"
            ));
        }
        Ok(ShortText(s))
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for ShortText<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::parse(&v).map_err(serde::de::Error::custom)
    }
}

impl<const MAX: usize> JsonSchema for ShortText<MAX> {
    fn schema_name() -> Cow<'static, str> {
        Cow::Owned(format!("ShortText{MAX}"))
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "minLength": 1, "maxLength": MAX})
    }
}

/// An identifier that goes into a provider URL as one path segment: a non-empty string that
/// is not `.` or `..` (which would change which endpoint is called).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub String);

impl Id {
    fn parse(v: &Value) -> Result<Self, String> {
        let id = text(v)?;
        if crate::transport::is_dot_segment(&id) {
            Err(format!(
                "must be an identifier, not {id:?} (a path segment that would change which \
                 provider endpoint is called)"
            ))
        } else {
            Ok(Id(id))
        }
    }
    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
parsed!(Id, "Id", {"type": "string", "minLength": 1, "not": {"enum": [".", ".."]}});

/// An amount: a positive integer in minor units (cents, kobo, fils).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(i64);

impl Amount {
    fn parse(v: &Value) -> Result<Self, String> {
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(v) if v > 0 => Ok(Amount(v)),
                _ => Err(format!(
                    "must be a positive integer in minor units (got {n})"
                )),
            },
            other => Err(format!(
                "must be a positive integer in minor units (got {})",
                kind(other)
            )),
        }
    }
    /// The amount in minor units.
    pub fn get(self) -> i64 {
        self.0
    }
}
parsed!(Amount, "Amount", {"type": "integer", "minimum": 1});

/// An ISO 4217 currency code (three ASCII letters), upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(String);

impl Currency {
    fn parse(v: &Value) -> Result<Self, String> {
        let code = text(v)?;
        if code.len() == 3 && code.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(Currency(code.to_ascii_uppercase()))
        } else {
            Err(format!("must be a 3-letter currency code (got {code:?})"))
        }
    }
    /// The code, upper case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
parsed!(Currency, "Currency", {"type": "string", "pattern": "^[A-Za-z]{3}$"});

/// An email address: one `@`, a non-empty local part and a dot inside the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(pub String);

impl Email {
    fn parse(v: &Value) -> Result<Self, String> {
        let email = text(v)?;
        if is_email(&email) {
            Ok(Email(email))
        } else {
            Err(format!("must be an email address (got {email:?})"))
        }
    }
}
parsed!(Email, "Email", {"type": "string", "format": "email"});

/// A duration longer than zero written as text (`"2d"`, `"36h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDuration(pub Duration);

impl TextDuration {
    fn parse(v: &Value) -> Result<Self, String> {
        match v {
            Value::String(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) if !d.is_zero() => Ok(TextDuration(d)),
                Ok(_) => Err("must be longer than zero".to_owned()),
                Err(e) => Err(format!(
                    "must be a duration such as \"2d\" or \"36h\" ({e})"
                )),
            },
            other => Err(format!(
                "must be a duration such as \"2d\" (got {})",
                kind(other)
            )),
        }
    }
}
parsed!(TextDuration, "TextDuration", {"type": "string", "format": "duration"});

/// A closed set of text values (`pub enum Method { /// doc Wire => "wire", ... }`), read
/// case-insensitively (`"Wire"` is `wire`) and refused otherwise with the allowed values named,
/// with an `enum` JSON Schema.
macro_rules! one_of {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, as written in definitions.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The value as written in definitions.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            #[allow(dead_code)]
            fn parse(v: &::serde_json::Value) -> ::std::result::Result<Self, String> {
                let s = $crate::steps::parameters::text(v)?;
                $( if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); } )+
                Err(format!("must be one of {} (got {s:?})", Self::ALL.join(", ")))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let v = <::serde_json::Value as ::serde::Deserialize>::deserialize(d)?;
                $name::parse(&v).map_err(::serde::de::Error::custom)
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed(stringify!($name))
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({"type": "string", "enum": [$($text),+]})
            }
        }
    };
}
pub(crate) use one_of;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err<T: for<'de> Deserialize<'de> + std::fmt::Debug>(v: Value) -> String {
        serde_json::from_value::<T>(v).unwrap_err().to_string()
    }

    #[test]
    fn each_value_type_says_what_is_wrong() {
        assert!(err::<Amount>(json!(10.5)).contains("minor units"));
        assert!(err::<Amount>(json!(-1)).contains("minor units"));
        assert!(err::<Amount>(json!("100")).contains("a string"));
        assert!(err::<Currency>(json!("EURO")).contains("3-letter"));
        assert!(err::<Text>(json!("  ")).contains("must not be empty"));
        assert!(err::<Id>(json!(".")).contains("must be an identifier"));
        assert!(err::<Email>(json!("a@b")).contains("email"));
        assert!(err::<TextDuration>(json!("soon")).contains("duration"));
        assert!(err::<TextDuration>(json!("0s")).contains("longer than zero"));
        assert!(err::<ShortText<3>>(json!("abcd")).contains("at most 3"));
        let d: TextDuration = serde_json::from_value(json!("2d")).expect("duration");
        assert_eq!(d.0, Duration::from_secs(2 * 24 * 3600));
        let t: Text = serde_json::from_value(json!(" x ")).expect("text");
        assert_eq!(t.as_str(), "x");
    }
}
