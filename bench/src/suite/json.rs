//! Conveniences over [`serde_json::Value`] for the results tree: build it by chained
//! `set`s, read it by `/`-separated member paths where a missing member reads as `null`.

use anyhow::Result;
use serde_json::{Map, Value};

/// The results tree's vocabulary on [`Value`].
pub trait JsonExt {
    /// An empty object.
    fn obj() -> Value;
    /// Parses one JSON document.
    ///
    /// # Errors
    /// On malformed input, with its line and column.
    fn parse(text: &str) -> Result<Value>;
    /// Sets `key` on an object (no-op on anything else); returns self for chaining.
    fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Value;
    /// Member `key` of an object, `null` when absent or not an object.
    fn member(&self, key: &str) -> &Value;
    /// Follows a `/`-separated path of member names; `null` where it leads nowhere.
    fn at(&self, path: &str) -> &Value;
    /// Mutable member at a `/`-separated path, when every step is an object holding it.
    fn at_mut(&mut self, path: &str) -> Option<&mut Value>;
    /// Member names of an object, in order (none for anything else).
    fn keys(&self) -> Vec<String>;
    /// The value as a number.
    fn num(&self) -> Option<f64>;
    /// The value as a string.
    fn str(&self) -> Option<&str>;
    /// Pretty-printed with two-space indentation and a final newline.
    fn pretty(&self) -> String;
}

static NULL: Value = Value::Null;

impl JsonExt for Value {
    fn obj() -> Value {
        Value::Object(Map::new())
    }

    fn parse(text: &str) -> Result<Value> {
        Ok(serde_json::from_str(text)?)
    }

    fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Value {
        if let Value::Object(map) = self {
            map.insert(key.to_owned(), value.into());
        }
        self
    }

    fn member(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }

    fn at(&self, path: &str) -> &Value {
        path.split('/')
            .filter(|s| !s.is_empty())
            .fold(self, |v, k| v.member(k))
    }

    fn at_mut(&mut self, path: &str) -> Option<&mut Value> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .try_fold(self, |v, k| v.as_object_mut()?.get_mut(k))
    }

    fn keys(&self) -> Vec<String> {
        self.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn num(&self) -> Option<f64> {
        self.as_f64()
    }

    fn str(&self) -> Option<&str> {
        self.as_str()
    }

    fn pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_members_and_missing_ones_read_null() {
        let mut v = Value::obj();
        v.set("a", Value::obj()).set("n", 3usize);
        v.at_mut("a").unwrap().set("b", "x");
        assert_eq!(v.at("a/b").str(), Some("x"));
        assert_eq!(v.at("n").num(), Some(3.0));
        assert_eq!(v.at("a/missing/deeper"), &Value::Null);
        assert!(v.at_mut("n/b").is_none());
        assert_eq!(v.keys(), ["a", "n"]);
        assert_eq!(Value::parse(&v.pretty()).unwrap(), v);
        assert!(Value::parse("{").is_err());
    }
}
