//! Finding a key that appears twice in one JSON object of a request.
//!
//! serde_json keeps the last of duplicate keys; a gateway or WAF in front of the
//! service may read the first, and so check another job than the one that runs
//! (`{"code":"print(1)","code":"…"}`; security-2 F12). Such requests are refused.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The path (`code`, `limits.memoryMb`, `files[2].path`) of the first key that
/// appears twice in one object of `body`, which must be valid JSON; `None` when
/// there is none.
pub fn first_duplicate_key(body: &[u8]) -> Option<String> {
    let mut found = None;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let walk = Walk {
        path: String::new(),
        found: &mut found,
    };
    // The body already parsed as JSON, so this walk cannot fail on syntax.
    walk.deserialize(&mut deserializer).ok()?;
    found
}

/// Visits one value at `path`, recording the first duplicate key in `found`.
struct Walk<'a> {
    path: String,
    found: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let walk = Walk {
                path: format!("{}[{index}]", self.path),
                found: &mut *self.found,
            };
            if seq.next_element_seed(walk)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = match self.path.as_str() {
                "" => key.clone(),
                parent => format!("{parent}.{key}"),
            };
            if !seen.insert(key) && self.found.is_none() {
                *self.found = Some(path.clone());
            }
            map.next_value_seed(Walk {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_at_any_depth() {
        for (body, want) in [
            (r#"{"code":"print(1)","code":"print(2)"}"#, Some("code")),
            (
                r#"{"code":"1","limits":{"memoryMb":64,"memoryMb":1}}"#,
                Some("limits.memoryMb"),
            ),
            (
                r#"{"files":[{"path":"a","content":"x"},{"path":"b","path":"c"}]}"#,
                Some("files[1].path"),
            ),
            (r#"{"a":1,"b":2,"a":3,"b":4}"#, Some("a")),
            (r#"{"code":"1","\u0063ode":"2"}"#, Some("code")),
            (
                r#"{"code":"1","limits":{"memoryMb":64},"x":{"memoryMb":1}}"#,
                None,
            ),
            (r#"[{"a":1},{"a":1}]"#, None),
            (r#"{"a":[1,2,{"b":null}],"c":true,"d":-1.5e3}"#, None),
            ("\"text\"", None),
        ] {
            assert_eq!(
                first_duplicate_key(body.as_bytes()).as_deref(),
                want,
                "{body}"
            );
        }
    }
}
