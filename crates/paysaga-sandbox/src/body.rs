//! Request-body helpers shared by the providers: typed field access on a JSON object with
//! human-readable errors, and a small `application/x-www-form-urlencoded` decoder.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// A JSON object request body.
#[derive(Debug, Default)]
pub(crate) struct Body(Map<String, Value>);

impl Body {
    /// Parses `bytes` as a JSON object (an empty body is an empty object).
    pub(crate) fn json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err("request body must be a JSON object".into()),
            Err(e) => Err(format!("request body is not valid JSON: {e}")),
        }
    }

    /// Parses a form-encoded body, or a JSON one when it looks like JSON.
    pub(crate) fn form_or_json(bytes: &[u8]) -> Result<Self, String> {
        let trimmed = bytes.iter().position(|b| !b.is_ascii_whitespace());
        if trimmed.is_some_and(|i| bytes[i] == b'{') {
            return Self::json(bytes);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "form body is not UTF-8".to_owned())?;
        let map = decode_form(text)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Ok(Self(map))
    }

    /// The raw value of a field (`null` counts as absent).
    pub(crate) fn value(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// An optional string field; empty strings count as absent.
    pub(crate) fn str(&self, key: &str) -> Result<Option<String>, String> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("The {key} field must be a string.")),
        }
    }

    /// A required, non-empty string field.
    pub(crate) fn req_str(&self, key: &str) -> Result<String, String> {
        self.str(key)?
            .ok_or_else(|| format!("The {key} field is required."))
    }

    /// An optional integer field (JSON integer only).
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("The {key} field must be an integer.")),
            Some(_) => Err(format!("The {key} field must be an integer.")),
        }
    }

    /// An optional array-of-strings field.
    pub(crate) fn str_array(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(format!("The {key} field must be an array of strings.")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!("The {key} field must be an array of strings.")),
        }
    }
}

/// Decodes `a=1&b=x+y%21` into pairs (later keys win).
pub(crate) fn decode_form(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match decoded {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let f = decode_form(
            "grant_type=client_credentials&scope=customer%3Awrite+payout%3Acreate&x=%zz&y",
        );
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["scope"], "customer:write payout:create");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "");
    }

    #[test]
    fn typed_fields() {
        let b =
            Body::json(br#"{"a":"x","n":5,"f":1.5,"arr":["p"],"e":"","z":null}"#).expect("json");
        assert_eq!(b.req_str("a"), Ok("x".into()));
        assert!(b.req_str("e").is_err());
        assert_eq!(b.str("z"), Ok(None));
        assert_eq!(b.int("n"), Ok(Some(5)));
        assert!(b.int("f").is_err());
        assert_eq!(b.str_array("arr"), Ok(Some(vec!["p".into()])));
        assert!(Body::json(b"[1]").is_err());
        assert!(Body::json(b"").is_ok());
    }
}
