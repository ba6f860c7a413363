//! An incremental scan of a JSON object too large to buffer: it keeps the short members
//! of the top-level object (`model`, `stream`, `stream_options`, …) and skips the rest.

use serde_json::{Map, Value};

/// Longest raw key or value text kept; longer members are skipped.
const MAX_MEMBER: usize = 4096;

/// Where the scan is within the top-level object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Before the top-level `{`, or after its `}`.
    #[default]
    Outside,
    /// Reading a member's key.
    Key,
    /// Reading a member's value (whatever its nesting).
    Value,
}

/// Fed the bytes of a JSON text in pieces, collects its short top-level members.
///
/// The scan trusts the input to be JSON; on anything else it yields what it made of it,
/// which at worst is fewer members.
#[derive(Debug, Default)]
pub(crate) struct TopLevelScan {
    phase: Phase,
    /// Open objects and arrays, the top-level object included.
    depth: usize,
    in_string: bool,
    escaped: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    /// The current key or value outgrew [`MAX_MEMBER`].
    too_long: bool,
    members: Map<String, Value>,
}

impl TopLevelScan {
    /// Scan the next piece of the text.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    /// The members found, each parsed on its own.
    pub(crate) fn into_members(self) -> Map<String, Value> {
        self.members
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            self.keep(b);
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.keep(b);
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.phase = Phase::Key;
                } else {
                    self.keep(b);
                }
            }
            b'}' | b']' => {
                if self.depth == 1 {
                    self.finish_member();
                    self.phase = Phase::Outside;
                } else {
                    self.keep(b);
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b':' if self.depth == 1 && self.phase == Phase::Key => self.phase = Phase::Value,
            b',' if self.depth == 1 => {
                self.finish_member();
                self.phase = Phase::Key;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => self.keep(b),
        }
    }

    fn keep(&mut self, b: u8) {
        let buf = match self.phase {
            Phase::Outside => return,
            Phase::Key => &mut self.key,
            Phase::Value => &mut self.value,
        };
        if buf.len() < MAX_MEMBER {
            buf.push(b);
        } else {
            self.too_long = true;
        }
    }

    fn finish_member(&mut self) {
        if self.phase == Phase::Value && !self.too_long {
            let key = serde_json::from_slice::<String>(&self.key);
            let value = serde_json::from_slice::<Value>(&self.value);
            if let (Ok(key), Ok(value)) = (key, value) {
                self.members.insert(key, value);
            }
        }
        self.key.clear();
        self.value.clear();
        self.too_long = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scan_in_pieces(text: &str, piece: usize) -> Map<String, Value> {
        let mut scan = TopLevelScan::default();
        for chunk in text.as_bytes().chunks(piece) {
            scan.feed(chunk);
        }
        scan.into_members()
    }

    #[test]
    fn keeps_short_members_and_skips_long_ones() {
        let long = "x \\\" } ] , : { [".repeat(2000);
        let text = format!(
            r#" {{ "messages" : [{{"role":"user","content":"{long}"}}], "model":"gpt-4o",
               "stream": true, "stream_options": {{"include_usage": true}}, "n": [1, 2],
               "esc\"aped": "a,b}}" }} "#
        );
        for piece in [1, 7, 4096, text.len()] {
            let members = scan_in_pieces(&text, piece);
            assert_eq!(
                Value::Object(members),
                json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                       "n": [1, 2], "esc\"aped": "a,b}"})
            );
        }
    }

    #[test]
    fn tolerates_garbage() {
        assert!(scan_in_pieces("not json at all }}]]", 3).is_empty());
        assert!(scan_in_pieces("", 1).is_empty());
    }
}
