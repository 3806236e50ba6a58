//! Reading a JSON `Value` (serde_json's) field by field, with each field's path for error
//! messages. `null` counts as absent; unknown fields are rejected before any value is read.

use serde_json::Map;
pub(super) use serde_json::Value;

use super::ConfigError;

pub(super) type Result<T> = std::result::Result<T, ConfigError>;

/// Parses one JSON value (serde_json: RFC 8259, strict, nesting at most 128 deep). Errors read
/// `invalid JSON: <what> at line L column C`, serde_json's own words and position.
pub(super) fn parse(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ConfigError::at("", format_args!("invalid JSON: {e}")))
}

pub(super) fn string_item(path: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(wrong_type(path, "a string", other)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong_type(path: &str, expected: &str, got: &Value) -> ConfigError {
    ConfigError::at(path, format_args!("must be {expected}, got {}", kind(got)))
}

/// One JSON object being decoded: reads fields by name and builds each field's path.
/// `null` counts as absent.
pub(super) struct Obj<'a> {
    path: String,
    /// serde_json's map: sorted by key, of duplicate keys the last one counts.
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    pub(super) fn new(path: &str, value: &'a Value, allowed: &[&str]) -> Result<Obj<'a>> {
        let o = Obj::any(path, value)?;
        o.allow(allowed)?;
        Ok(o)
    }

    pub(super) fn any(path: &str, value: &'a Value) -> Result<Obj<'a>> {
        match value {
            Value::Object(map) => Ok(Obj {
                path: path.to_string(),
                map,
            }),
            other => Err(wrong_type(path, "an object", other)),
        }
    }

    /// Rejects fields not in `allowed`, before any value is looked at, so a misspelt field is
    /// reported as such rather than as a missing one. Of several, the first in byte order is
    /// named (serde_json's map is sorted), whatever the order in the document.
    pub(super) fn allow(&self, allowed: &[&str]) -> Result<()> {
        let unknown = self.map.keys().map(String::as_str);
        match unknown.filter(|k| !allowed.contains(k)).min() {
            None => Ok(()),
            Some(unknown) => Err(ConfigError::at(
                self.child(unknown),
                format_args!(
                    "unknown field, expected one of: {}",
                    super::join(allowed, ", ")
                ),
            )),
        }
    }

    /// Whether `key` is given (and not `null`).
    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn required<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(&mut Self, &str) -> Result<Option<T>>,
    ) -> Result<T> {
        read(self, key)?.ok_or_else(|| ConfigError::new(self.child(key), "is required"))
    }

    pub(super) fn string(&mut self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| string_item(&self.child(key), v))
            .transpose()
    }

    pub(super) fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(&self.child(key), "true or false", other)),
        }
    }

    /// A whole number in 0..=max.
    pub(super) fn integer(&mut self, key: &str, max: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64().filter(|v| *v <= max) {
                Some(v) => Ok(Some(v)),
                None => Err(ConfigError::at(
                    self.child(key),
                    format_args!("must be a whole number from 0 to {max}, got {n}"),
                )),
            },
            Some(other) => Err(wrong_type(&self.child(key), "a whole number", other)),
        }
    }

    /// A number (decimals allowed) in min..=max. The bounds are whole numbers so that no float
    /// formatting code (kilobytes of Wasm) is linked just for this message.
    pub(super) fn number(&mut self, key: &str, min: u32, max: u32) -> Result<Option<f64>> {
        let range = f64::from(min)..=f64::from(max);
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64().filter(|v| range.contains(v)) {
                Some(v) => Ok(Some(v)),
                None => Err(ConfigError::at(
                    self.child(key),
                    format_args!("must be a number from {min} to {max}, got {n}"),
                )),
            },
            Some(other) => Err(wrong_type(&self.child(key), "a number", other)),
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &str,
        options: &[(&str, T)],
    ) -> Result<Option<T>> {
        let names = |i: usize| options.get(i).map(|(n, _)| *n);
        let found = self.choice_index(key, &names)?;
        Ok(found.and_then(|i| options.get(i)).map(|(_, v)| *v))
    }

    /// The non-generic part of `choice`: the index of the option named by `key`'s string.
    #[inline(never)]
    fn choice_index<'n>(
        &mut self,
        key: &str,
        names: &dyn Fn(usize) -> Option<&'n str>,
    ) -> Result<Option<usize>> {
        let Some(value) = self.string(key)? else {
            return Ok(None);
        };
        let mut i = 0;
        while let Some(name) = names(i) {
            if name == value {
                return Ok(Some(i));
            }
            i += 1;
        }
        let mut list = String::new();
        let mut j = 0;
        while let Some(name) = names(j) {
            if j > 0 {
                list.push_str(", ");
            }
            list.push('"');
            list.push_str(name);
            list.push('"');
            j += 1;
        }
        Err(ConfigError::at(
            self.child(key),
            format_args!("\"{value}\" is not one of {list}"),
        ))
    }

    /// Generic only in the per-item push: the array lookup and the item paths are shared
    /// (non-generic) code, since this is instantiated for every list type of the config.
    pub(super) fn list<T>(
        &mut self,
        key: &str,
        item: impl Fn(&str, &Value) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some((path, items)) = self.array(key)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, v) in items.iter().enumerate() {
            out.push(item(&index_path(&path, i), v)?);
        }
        Ok(Some(out))
    }

    #[inline(never)]
    fn array(&self, key: &str) -> Result<Option<(String, &'a [Value])>> {
        let path = self.child(key);
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some((path, items.as_slice()))),
            Some(other) => Err(wrong_type(&path, "an array", other)),
        }
    }

    pub(super) fn object<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(Obj<'a>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => read(Obj::any(&self.child(key), value)?).map(Some),
        }
    }

    /// A field of any type, read by `read(path, value)`.
    pub(super) fn value<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(&str, &Value) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => read(&self.child(key), value).map(Some),
        }
    }
}

/// `path[i]`: the path of one list item.
#[inline(never)]
pub(super) fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => String::from("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn serde_json_wording_and_numbers() {
        let weight = |w: &str| {
            format!(
                r#"{{"rules":[{{"name":"r","destinations":[{{"name":"a","cluster":"c","weight":{w}}}]}}]}}"#
            )
        };
        // serde_json re-formats numbers in messages (the own reader showed them as written).
        assert_eq!(
            err(&weight("1E2")),
            "rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got 100.0"
        );
        assert_eq!(
            err(&weight("2.50")),
            "rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got 2.5"
        );
        assert_eq!(
            err("[1,]"),
            "invalid JSON: trailing comma at line 1 column 4"
        );
        assert_eq!(err("01"), "invalid JSON: invalid number at line 1 column 2");
        assert_eq!(
            err(r#""\ud800""#),
            "invalid JSON: unexpected end of hex escape at line 1 column 8"
        );
        // serde_json's nesting limit: 128 levels.
        let deep = "[".repeat(129) + &"]".repeat(129);
        assert_eq!(
            err(&deep),
            "invalid JSON: recursion limit exceeded at line 1 column 128"
        );
    }

    #[test]
    fn last_duplicate_counts_and_unknown_fields_in_byte_order() {
        let c = parse(br#"{"debug_header":false,"debug_header":true}"#);
        assert!(c.is_ok_and(|c| c.debug_header));
        let e = err(r#"{"zz":1,"aa":2}"#);
        assert!(e.starts_with("aa: unknown field"), "{e}");
    }
}
